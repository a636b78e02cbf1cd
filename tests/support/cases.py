"""Cases shared by the test modules: every loss of the library, and the implementations on the CPU."""

# (class name, constructor kwargs, reference norm kwargs for reference.loop_terms)
LOSS_CASES = [
    ("SumHingeLoss", {}, {"kind": "sum"}),
    ("MaxViolationLoss", {}, {"kind": "max"}),
    ("TopKViolationLoss", {"k": 3}, {"kind": "topk", "k": 3}),
    ("LpViolationLoss", {"p": 2.5}, {"kind": "lp", "p": 2.5}),
    ("MixedViolationLoss", {"mix": 0.3}, {"kind": "mix", "mix": 0.3}),
    ("LogSumExpViolationLoss", {"temperature": 0.1}, {"kind": "lse", "temperature": 0.1}),
    # with the library's default margin (0.2) rather than InfoNCE's 0: one reference default for all
    ("InfoNCELoss", {"temperature": 0.1, "margin": 0.2}, {"kind": "infonce", "temperature": 0.1}),
]
FAST_IMPLS = ["dense", "chunked"]
# the same norms as vse_losses Norm objects (for the ops that take one), and their test ids
NORM_KWARGS = [norm for _, _, norm in LOSS_CASES]
NORM_IDS = ["sum", "max", "top3", "l2.5", "mix", "lse", "infonce"]


def loss_and_grads(name, kwargs, impl, x0, y0, labels=None, ref_labels=None):
    """The loss ``name`` (margin 0.5, summed over its terms) computed by ``impl`` on copies of x0
    (and y0, the other modality): (value, ∂x, ∂y). labels: the PML call form with ref_emb."""
    from pytorch_metric_learning.reducers import SumReducer

    import vse_losses

    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    loss_fn = getattr(vse_losses, name)(**{**kwargs, "impl": impl, "margin": 0.5, "reducer": SumReducer()})
    loss = loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels) if labels is not None else loss_fn(x, y)
    loss.backward()
    return loss.detach(), x.grad, y.grad
