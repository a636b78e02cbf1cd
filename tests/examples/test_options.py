"""The command lines: --help states every option's real default once, and each bad value is an
error under its own flag."""

import re

import pytest
from vse import evaluate_cli, options
from vse.training import main


def _help(capsys, monkeypatch, parse):
    """{--flag: help text} from the --help output, wrapped lines joined."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        parse(["--help"])
    entries, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"^  (-\S.*?)(?: {2,}(.*))?$", line)
        if m:  # "  --flag METAVAR   help", or the flag alone with its help on the next lines
            current = re.findall(r"--[\w-]+", m[1])[-1]
            entries[current] = m[2] or ""
        elif current and line.startswith("   ") and line.strip():
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return entries


NOTE = re.compile(r"\(default: ([^;()]+)(?:; ([^()]+))?\)")
DEMO = re.compile(r"^(\S+) (?:for the embedded dataset|without --data_path)\b")


def _stated(help_text):
    """(what the help says the default is, what it says the embedded dataset uses or None)."""
    notes = NOTE.findall(help_text)
    if not notes:
        return None, None
    assert len(notes) == 1, help_text
    plain, rest = notes[0]
    demo = DEMO.match(rest)
    return plain, demo[1] if demo else None


def _as(value_text, like):
    if isinstance(like, bool):
        assert value_text in ("on", "off"), value_text
        return value_text == "on"
    return type(like)(value_text)


def _quiet_finalize(argv):
    return options.finalize(*options.parse(argv), log=lambda *_: None)


def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_train_help_states_the_defaults_that_apply(capsys, monkeypatch, tmp_path):
    entries = _help(capsys, monkeypatch, options.parse)
    plain = _quiet_finalize(["--data_path", str(tmp_path)])  # data on disk: the original's defaults
    demo = _quiet_finalize([])  # no argument: the embedded dataset
    for action in _options(options.build_parser()):
        flag = action.option_strings[-1]
        text = entries[flag]
        assert text, f"{flag} has no help"
        assert len(re.findall(r"default", text, re.I)) <= 1, f"{flag}: {text}"
        stated, stated_demo = _stated(text)
        value, demo_value = getattr(plain, action.dest), getattr(demo, action.dest)
        if action.dest == "data_path":  # given above; its default is what the no-argument run has
            value = demo_value
        if value is None or value == "":
            assert stated and stated.strip() not in ("None", "''"), f"{flag} does not say what happens by default"
            assert demo_value == value and stated_demo is None, flag
            continue
        if stated is None:  # only a flag that is off either way may leave its default unsaid
            assert value is False and demo_value is False, f"{flag} does not state its default {value!r}"
            continue
        assert _as(stated, value) == value, f"{flag}: help says {stated!r}, {value!r} applies"
        if stated_demo is None:
            assert demo_value == value, f"{flag}: the embedded dataset uses {demo_value!r}, help does not say so"
        else:
            assert _as(stated_demo, demo_value) == demo_value, (
                f"{flag}: help says {stated_demo!r} on the embedded dataset, {demo_value!r} applies"
            )


def test_train_help_conditional_defaults(tmp_path):
    """What the help's words promise: --loss mh with --max_violation or --warmup_steps, and the
    embedded dataset's crop size following --synthetic_size."""
    data = ["--data_path", str(tmp_path)]
    assert _quiet_finalize(data + ["--max_violation"]).loss == "mh"
    assert _quiet_finalize(data + ["--warmup_steps", "5"]).loss == "mh"
    assert _quiet_finalize(["--synthetic_size", "48"]).crop_size == 48
    assert _quiet_finalize(["--synthetic_size", "48", "--crop_size", "40"]).crop_size == 40


def test_evaluate_help_states_the_defaults_that_apply(capsys, monkeypatch):
    parser = evaluate_cli.build_parser()
    entries = _help(capsys, monkeypatch, parser.parse_args)
    args = parser.parse_args(["model_best.pth.tar"])
    for action in _options(parser):
        flag = action.option_strings[-1]
        text = entries[flag]
        assert text, f"{flag} has no help"
        assert len(re.findall(r"default", text, re.I)) <= 1, f"{flag}: {text}"
        stated, _ = _stated(text)
        value = getattr(args, action.dest)
        if value is None:
            assert stated and stated.strip() != "None", flag
        elif stated is None:
            assert value is False, f"{flag} does not state its default {value!r}"
        else:
            assert _as(stated, value) == value, f"{flag}: help says {stated!r}, {value!r} applies"


# ------------------------------------------------------------------ one flag per bad value


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--margin", "-0.1"),
        ("--margin", "nan"),
        ("--batch_size", "0"),
        ("--topk_k", "0"),
        ("--lp_p", "0.5"),
        ("--lp_p", "nan"),
        ("--warmup_steps", "-1"),
        ("--learning_rate", "0"),
        ("--grad_clip", "-1"),
        ("--workers", "-1"),
        ("--log_step", "0"),
        ("--embed_size", "0"),
        ("--word_dim", "0"),
        ("--lr_update", "0"),
        ("--val_images", "0"),
        ("--data_seed", "-1"),
        ("--synthetic_train", "0"),
        ("--pretrain_images", "0"),
        ("--pretrain_epochs", "0"),
        ("--pretrain_seed", "-1"),
        ("--num_layers", "0"),
        ("--temperature", "0"),
        ("--temperature", "nan"),
    ],
)
def test_bad_value_is_reported_under_its_flag(tmp_path, capsys, synth_args, flag, value):
    # the loss options too: each is checked on its own, whichever --loss is chosen
    assert main(synth_args + ["--logger_name", str(tmp_path / "r"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}: ") and value in err[0], err
    assert not (tmp_path / "r").exists()  # refused before anything was built or written


def test_edge_values_are_accepted(tmp_path):
    opt = _quiet_finalize(
        [
            "--data_path",
            str(tmp_path),
            "--loss",
            "lp",
            "--lp_p",
            "inf",
            "--margin",
            "0",
            "--grad_clip",
            "0",
            "--workers",
            "0",
            "--val_step",
            "0",
            "--num_epochs",
            "0",
        ]
    )
    assert opt.lp_p == float("inf") and opt.loss == "lp"
    assert _quiet_finalize(["--data_path", str(tmp_path), "--loss", "topk", "--topk_k", "1"]).topk_k == 1
