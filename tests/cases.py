"""Cases shared by the test modules: every loss of the library, and the implementations on the CPU."""

# (class name, constructor kwargs, reference norm kwargs for reference.loop_terms)
LOSS_CASES = [
    ("SumHingeLoss", {}, {"kind": "sum"}),
    ("MaxViolationLoss", {}, {"kind": "max"}),
    ("TopKViolationLoss", {"k": 3}, {"kind": "topk", "k": 3}),
    ("LpViolationLoss", {"p": 2.5}, {"kind": "lp", "p": 2.5}),
    ("MixedViolationLoss", {"mix": 0.3}, {"kind": "mix", "mix": 0.3}),
]
FAST_IMPLS = ["dense", "chunked"]
