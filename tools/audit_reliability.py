"""Reproduces the items of issue 16 (reliability and bad input) from the command line and prints one row per item.

``python tools/audit_reliability.py [--json OUT] [--checkout DIR] [--only ITEM ...]`` runs each reproduction in a
fresh temporary folder: tiny files,
``refineg`` subcommands as subprocesses and, where an LLM is involved, the fault-injecting loopback chat server of
the tests (``tests/llm/chat_server.py``) or a port nobody listens on. Nothing is trained; the items that need a
trained tagger are covered by the tests named in ``docs/reliability.md``. A row says ``ok`` when the behaviour is
the one the issue asks for, ``FAIL`` otherwise, with what was observed. The subcommands run the ``refineg`` and
``train.py`` of ``--checkout`` (default: the checkout this script is in), so an older checkout can be audited too.
Exit status: 0 when every row is ``ok``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHECKOUT = REPO  # the refineg under audit (--checkout)

from tests.llm.chat_server import ChatServer  # noqa: E402

TOKENS = ["Obama", "meets", "Merkel", "in", "Berlin"]
CHECKS: list[tuple[str, str, Callable[[Path], tuple[bool, str]]]] = []


def check(item: str, what: str):
    """Registers a reproduction: ``fn(tmp) -> (as asked, observed)``."""

    def wrap(fn):
        CHECKS.append((item, what, fn))
        return fn

    return wrap


def _env() -> dict[str, str]:
    """The environment of a subcommand: offline, the audited checkout first on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(CHECKOUT)}
    env.pop("REFINEG_RUN_NAME", None)
    return env


def cli(*args: str, cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """``refineg ARGS`` in ``cwd``: ``(status, stdout, stderr)``."""
    env = _env()
    proc = subprocess.run(
        [sys.executable, "-m", "refineg.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    return proc.returncode, proc.stdout, proc.stderr


def train_py(*args: str, cwd: Path) -> tuple[int, str, str]:
    """``python train.py ARGS`` (no W&B, runs under ``cwd``): ``(status, stdout, stderr)``."""
    env = _env()
    proc = subprocess.run(
        [sys.executable, str(CHECKOUT / "train.py"), "logger.wandb=false", f"runs_dir={cwd / 'runs'}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    return proc.returncode, proc.stdout, proc.stderr


def one_line(rc: int, err: str, needle: str, status: int = 2) -> tuple[bool, str]:
    """A clean one-line error: status ``status``, no traceback, the last stderr line is ``error: ...needle...``."""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    good = rc == status and "Traceback" not in err and len(errors) == 1 and last == errors[0] and needle in last
    shown = last if "Traceback" not in err else "Traceback ... " + last
    return good, f"rc {rc}: {shown[:160]}"


def jsonl(path: Path, *records) -> Path:
    """Writes one line per record (a dict as JSON, a string as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def post(pid: str, tokens=TOKENS, **extra) -> dict:
    """A canonical JSONL record."""
    return {"id": pid, "tokens": list(tokens), "entities": [], **extra}


def dead_url() -> str:
    """A loopback URL nobody listens on (every request fails to connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def llm_args(url: str, prefix: str = "llm") -> list[str]:
    """Overrides that point an LLM config at ``url`` without retries."""
    return [f"{prefix}.base_url={url}", f"{prefix}.model=m", f"{prefix}.api_key_env=''", f"{prefix}.max_retries=0"]


def uncertain_preds(path: Path, n: int = 6) -> Path:
    """``n`` predictions with one uncertain PER entity each (all delegated by refine)."""
    return jsonl(
        path,
        *(
            post(
                f"p{i}",
                [f"Name{i}", "visits", "Paris"],
                entities=[{"start": 0, "end": 1, "type": "PER", "uncertainty": 0.9}],
            )
            for i in range(n)
        ),
    )


def refine_answer(prompt: str, n_images: int) -> str:
    """A valid answer to either refinement prompt."""
    if "corrected_entity" in prompt:
        return json.dumps({"reasoning_process": "r", "corrected_entity": "Null"})
    return json.dumps({"reasoning_process": "r", "corrected_type": "PER", "corrected_bounding_box": "Null"})


def images_and_posts(tmp: Path, image: str = "a.png") -> tuple[Path, Path, Path]:
    """A prediction file, a demonstration pool and an image folder for ``refineg ground``."""
    from PIL import Image

    (tmp / "img").mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), "white").save(tmp / "img" / "a.png")
    ent = [{"start": 0, "end": 1, "type": "PER", "boxes": [[1, 1, 20, 20]]}]
    pred = jsonl(tmp / "pred.jsonl", post("q1", image=image, entities=[{"start": 0, "end": 1, "type": "PER"}]))
    pool = jsonl(tmp / "pool.jsonl", post("d1", image="a.png", entities=ent))
    return pred, pool, tmp / "img"


def ground(
    files: tuple[Path, Path, Path], out: Path, url: str, *extra: str, cwd: Path, selector: str = "random"
) -> tuple[int, str, str]:
    """``refineg ground`` over ``images_and_posts``' files into ``out`` with the MLLM at ``url``."""
    pred, pool, img = files
    args = ["--pred", str(pred), "--pool", str(pool), "--images", str(img), "--out", str(out)]
    return cli("ground", *args, f"selector.mode={selector}", *extra, *llm_args(url, "mllm.llm"), cwd=cwd)


# ---- paid calls ------------------------------------------------------------------------------------------------


@check("paid-1", "refine without llm.cache_path, run twice: the rerun asks nothing")
def _(tmp):
    srv = ChatServer().start()
    srv.responder = refine_answer
    try:
        pred = uncertain_preds(tmp / "pred.jsonl")
        args = ["refine", "--pred", str(pred), "--out", str(tmp / "r" / "o.jsonl"), *llm_args(srv.base_url)]
        cli(*args, cwd=tmp)
        first = srv.total
        cli(*args, cwd=tmp)
        return first > 0 and srv.total == first, f"first run {first} requests, rerun {srv.total - first}"
    finally:
        srv.stop()


@check("paid-2", "refine llm.max_calls=3, run 3 times with a fresh cache each time: 3 calls in all")
def _(tmp):
    srv = ChatServer().start()
    srv.responder = refine_answer
    try:
        pred = uncertain_preds(tmp / "pred.jsonl", 12)
        for i in range(3):
            cli(
                "refine",
                "--pred",
                str(pred),
                "--out",
                str(tmp / "r" / "o.jsonl"),
                *llm_args(srv.base_url),
                "llm.max_calls=3",
                f"llm.cache_path={tmp / f'c{i}.sqlite'}",
                cwd=tmp,
            )
        return srv.total == 3, f"{srv.total} calls over 3 runs"
    finally:
        srv.stop()


@check("paid-3", "refine, zeroshot, synthesize, ground against a dead server: exit 1, outputs written")
def _(tmp):
    url, rows = dead_url(), []
    pred = uncertain_preds(tmp / "pred.jsonl", 2)
    rc, _, err = cli("refine", "--pred", str(pred), "--out", str(tmp / "r.jsonl"), *llm_args(url), cwd=tmp)
    rows.append(("refine", rc, (tmp / "r.jsonl").is_file()))
    rc, _, err = cli("zeroshot", "--data", str(pred), "--out", str(tmp / "z.jsonl"), *llm_args(url), cwd=tmp)
    rows.append(("zeroshot", rc, (tmp / "z.jsonl").is_file()))
    seeds = jsonl(tmp / "seeds.jsonl", post("s1", entities=[{"start": 0, "end": 1, "type": "PER"}]))
    rc, _, err = cli("synthesize", "--seeds", str(seeds), "--out", str(tmp / "s.jsonl"), *llm_args(url), cwd=tmp)
    rows.append(("synthesize", rc, (tmp / "s.jsonl").is_file()))
    p, pool, img = images_and_posts(tmp)
    rc, _, err = ground((p, pool, img), tmp / "g.jsonl", url, cwd=tmp)
    rows.append(("ground", rc, (tmp / "g.jsonl").is_file()))
    return all(rc == 1 and kept for _, rc, kept in rows), "; ".join(f"{n} rc {rc} kept {k}" for n, rc, k in rows)


@check("paid-3b", "pipeline mode=zeroshot against a dead server: exit 1, output kept, stage not marked done")
def _(tmp):
    args = [
        "pipeline",
        "--config",
        "configs/pipeline/refineg_sample.yaml",
        f"runs_dir={tmp}",
        "name=z",
        "mode=zeroshot",
        "data.eval_limit=2",
        "progress=false",
        *llm_args(dead_url(), "mllm"),
    ]
    rc, _, err = cli(*args, cwd=CHECKOUT)
    stamped = (tmp / "z" / "stages" / "zeroshot.json").exists()
    kept = (tmp / "z" / "zeroshot" / "zeroshot.jsonl").is_file()
    good, seen = one_line(rc, err, "none of the 2 LLM requests got an answer", status=1)
    return good and kept and not stamped, f"{seen}; output kept {kept}, stage stamped {stamped}"


# ---- model answers ---------------------------------------------------------------------------------------------


@check("answers-1", "zeroshot answered with 50,000 '[': an invalid answer (exit 1: nothing answered), no traceback")
def _(tmp):
    srv = ChatServer().start()
    srv.responder = lambda prompt, n: "[" * 50_000
    try:
        pred = jsonl(tmp / "p.jsonl", post("p1"))
        rc, _, err = cli(
            "zeroshot", "--data", str(pred), "--out", str(tmp / "z.jsonl"), *llm_args(srv.base_url), cwd=tmp
        )
        return one_line(rc, err, "invalid_json", status=1)
    finally:
        srv.stop()


@check("answers-2", "JSON extraction time on 176 KB of prose with brackets (linear: well under a second)")
def _(tmp):
    code = (
        "import time; from refineg.llm.json_extract import extract_json, JSONExtractionError\n"
        "text = 'see [a] and {b} ' * 11000\nt = time.perf_counter()\n"
        "try:\n    extract_json(text)\nexcept JSONExtractionError:\n    pass\nprint(round(time.perf_counter() - t, 3))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
    seconds = float(out.stdout.strip() or "inf")
    return seconds < 1.0, f"{seconds:.3f} s for {len('see [a] and {b} ' * 11000)} characters"


@check("answers-3", "a <think> block with [10, 10] and single-quoted JSON are not taken as the grounding answer")
def _(tmp):
    code = (
        "import json\nfrom refineg.llm.json_extract import extract_json\n"
        "from refineg.stages.grounding.parse import is_grounding_answer as ok\n"
        "good = [{'entity': 'Obama', 'entity_type': 'PER', 'bounding_box': [[1, 2, 3, 4]]}]\n"
        "a = extract_json('<think>maybe [10, 10]</think>' + json.dumps(good), (list, dict), ok)\n"
        "try:\n    b = extract_json(str(good), (list, dict), ok)\nexcept Exception as e:\n    b = type(e).__name__\n"
        "print(json.dumps([a == good, b]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
    think_ok, single = json.loads(out.stdout)
    return think_ok and single == "JSONExtractionError", f"think block skipped {think_ok}; single-quoted: {single}"


@check("answers-4", "a grounding answer with a wrong key ('region'): counted as an answer problem, not a silent none")
def _(tmp):
    srv = ChatServer().start()
    srv.responder = lambda prompt, n: json.dumps([{"entity": "Obama", "entity_type": "PER", "region": [1, 1, 9, 9]}])
    try:
        p, pool, img = images_and_posts(tmp)
        out = tmp / "g.jsonl"
        ground((p, pool, img), out, srv.base_url, cwd=tmp, selector="none")
        summary = json.loads(out.with_suffix(".summary.json").read_text())
        problems = summary.get("none_by_reason", {}).get("answer_problem", 0)
        return problems == 1, f"none_by_reason.answer_problem = {problems}"
    finally:
        srv.stop()


# ---- paths -----------------------------------------------------------------------------------------------------


@check("paths-1", "convert --to twitter-gmner with a post id '../../evil': refused, nothing outside --out-xml-dir")
def _(tmp):
    src = jsonl(
        tmp / "in.jsonl", post("../../evil", entities=[{"start": 0, "end": 1, "type": "PER", "boxes": [[0, 0, 5, 5]]}])
    )
    out = tmp / "a" / "b"
    rc, _, err = cli(
        "convert",
        "--format",
        "jsonl",
        "--input",
        str(src),
        "--to",
        "twitter-gmner",
        "--out",
        str(out / "o.txt"),
        "--out-xml-dir",
        str(out / "xml"),
        cwd=tmp,
    )
    good, seen = one_line(rc, err, "post id")
    return good and not list(tmp.rglob("evil.xml")), seen


@check("paths-2", "ground with image '../secret.png' (post, then pool demonstration), visualize, IMGID:../x")
def _(tmp):
    from PIL import Image

    rows = []
    Image.new("RGB", (8, 8)).save(tmp / "secret.png")
    for which in ("pred", "pool"):
        sub = tmp / which
        sub.mkdir()
        p, pool, img = images_and_posts(sub)
        bad = p if which == "pred" else pool
        records = [json.loads(line) for line in bad.read_text().splitlines()]
        records[0]["image"] = "../../secret.png"
        jsonl(bad, *records)
        rc, _, err = ground((p, pool, img), sub / "g.jsonl", dead_url(), cwd=tmp)
        rows.append((f"ground ({which})", *one_line(rc, err, "'..' part")))
    gold = jsonl(tmp / "v.jsonl", post("v1", image="/etc/passwd"))
    rc, _, err = cli(
        "visualize",
        "--pred",
        str(gold),
        "--gold",
        str(gold),
        "--images",
        str(tmp / "img"),
        "--out",
        str(tmp / "viz"),
        cwd=tmp,
    )
    rows.append(("visualize", *one_line(rc, err, "absolute path")))
    (tmp / "t").mkdir()
    (tmp / "t" / "a.txt").write_text("IMGID:../x\nObama\tB-PER\n")
    (tmp / "t" / "xml").mkdir()
    rc, _, err = cli(
        "convert",
        "--format",
        "twitter-gmner",
        "--txt",
        str(tmp / "t" / "a.txt"),
        "--xml-dir",
        str(tmp / "t" / "xml"),
        "--out",
        str(tmp / "t" / "o.jsonl"),
        cwd=tmp,
    )
    rows.append(("twitter-gmner reader", *one_line(rc, err, "'..' part")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


# ---- errors instead of tracebacks --------------------------------------------------------------------------------


@check("errors-1", "non-UTF-8 bytes in every reader (conll, twitter-gmner, jsonl, ccks, flickr30k)")
def _(tmp):
    rows = []
    (tmp / "a.txt").write_bytes(b"IMGID:1\nw\xe9rld\tO\n")
    (tmp / "a.jsonl").write_bytes(b'{"id": "1", "tokens": ["w\xe9"]}\n')
    (tmp / "t.json").write_bytes(b'{"1": {"text": "w\xe9"}}')
    flickr = tmp / "flickr"
    (flickr / "Sentences").mkdir(parents=True)
    (flickr / "Annotations").mkdir()
    (flickr / "ids.txt").write_text("1\n")
    (flickr / "Sentences" / "1.txt").write_bytes(b"[/EN#1/people A m\xe9n] walks\n")
    for fmt, args in [
        ("conll", ["--txt", str(tmp / "a.txt")]),
        ("twitter-gmner", ["--txt", str(tmp / "a.txt"), "--text-only"]),
        ("jsonl", ["--input", str(tmp / "a.jsonl")]),
        ("ccks", ["--text-json", str(tmp / "t.json")]),
        ("flickr30k-entities", ["--input", str(flickr)]),
    ]:
        rc, _, err = cli("convert", "--format", fmt, *args, "--out", str(tmp / "o.jsonl"), cwd=tmp)
        rows.append((fmt, *one_line(rc, err, "not UTF-8")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("errors-2", "XML entity bomb and external entity in a Twitter-GMNER xml")
def _(tmp):
    rows = []
    (tmp / "a.txt").write_text("IMGID:7\nObama\tB-PER\n")
    (tmp / "xml").mkdir()
    for name, xml in [
        (
            "bomb",
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aa"><!ENTITY b "&a;&a;">]><annotation>&b;</annotation>',
        ),
        (
            "external",
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;</annotation>',
        ),
    ]:
        (tmp / "xml" / "7.xml").write_text(xml)
        rc, _, err = cli(
            "convert",
            "--format",
            "twitter-gmner",
            "--txt",
            str(tmp / "a.txt"),
            "--xml-dir",
            str(tmp / "xml"),
            "--out",
            str(tmp / "o.jsonl"),
            cwd=tmp,
        )
        rows.append((name, *one_line(rc, err, "7.xml")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("errors-3", "JSONL image_size 5, meta [1, 2], image 12345, 100,000-deep nesting; CCKS {'1': 5}")
def _(tmp):
    rows = []
    for name, line in [
        ("image_size", json.dumps(post("1", image_size=5))),
        ("meta", json.dumps(post("1", meta=[1, 2]))),
        ("image", json.dumps(post("1", image=12345))),
        ("nesting", '{"id": "1", "tokens": ["a"], "meta": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"),
    ]:
        src = jsonl(tmp / f"{name}.jsonl", line)
        rc, _, err = cli("convert", "--format", "jsonl", "--input", str(src), "--out", str(tmp / "o.jsonl"), cwd=tmp)
        rows.append((name, *one_line(rc, err, f"{src}:1:")))
    (tmp / "t.json").write_text(json.dumps({"1": {"text": "the F-35 flew"}}))
    (tmp / "e.json").write_text(json.dumps({"1": 5}))
    rc, _, err = cli(
        "convert",
        "--format",
        "ccks",
        "--text-json",
        str(tmp / "t.json"),
        "--entity-json",
        str(tmp / "e.json"),
        "--out",
        str(tmp / "o.jsonl"),
        cwd=tmp,
    )
    rows.append(("ccks", *one_line(rc, err, "[id 1]")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


def _train_data(tmp: Path, train_bytes: bytes) -> list[str]:
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "data" / "train.jsonl").write_bytes(train_bytes)
    jsonl(tmp / "data" / "dev.jsonl", post("d1", entities=[{"start": 0, "end": 1, "type": "PER"}]))
    return [
        "data.format=jsonl",
        f"data.root={tmp / 'data'}",
        "data.train=train.jsonl",
        "data.dev=dev.jsonl",
        "data.test=null",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]


@check("errors-4", "train.py: unknown entity type, non-UTF-8 bytes, an empty training file")
def _(tmp):
    rows = []
    for name, data, needle in [
        ("type", b'{"id": "1", "tokens": ["Pizza"], "entities": [{"start": 0, "end": 1, "type": "FOOD"}]}\n', "'FOOD'"),
        ("utf8", b'{"id": "1", "tokens": ["w\xe9"]}\n', "not UTF-8"),
        ("empty", b"", "no posts to train on"),
    ]:
        sub = tmp / name
        sub.mkdir()
        rc, _, err = train_py(*_train_data(sub, data), cwd=sub)
        rows.append((name, *one_line(rc, err, needle)))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("errors-4b", "train.py config errors: wrong type, misspelt key, out of range, Lightning's own check")
def _(tmp):
    rows = []
    for override, needle in [
        ("trainer.max_epochs=abc", "could not be converted"),
        ("trainer.max_epoch=2", "Did you mean"),
        ("data.batch_size=-1", "data.batch_size=-1"),
        ("data.mixing=weird", "data.mixing='weird'"),
        ("trainer.precision=99", "Precision '99' is invalid"),
    ]:
        rc, _, err = train_py(override, cwd=tmp)
        rows.append((override, *one_line(rc, err, needle)))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("errors-5", "predict --ckpt missing.ckpt and a JSON file as --ckpt; calibrate likewise (also --ensemble)")
def _(tmp):
    rows = []
    data = jsonl(tmp / "d.jsonl", post("1", entities=[{"start": 0, "end": 1, "type": "PER"}]))
    for name, args, needle in [
        ("predict missing", ["predict", "--ckpt", "missing.ckpt", "--text", "Obama"], "checkpoint not found"),
        ("predict json", ["predict", "--ckpt", str(data), "--text", "Obama"], "not a PyTorch checkpoint"),
        ("calibrate missing", ["calibrate", "--ckpt", "missing.ckpt", "--data", str(data)], "checkpoint not found"),
        (
            "calibrate json",
            ["calibrate", "--ckpt", str(data), "--data", str(data), "--fit-evidential", str(data)],
            "not a PyTorch checkpoint",
        ),
        (
            "calibrate ensemble",
            ["calibrate", "--ckpt", "missing.ckpt", "--data", str(data), "--ensemble", "m2.ckpt"],
            "checkpoint not found",
        ),
    ]:
        rc, _, err = cli(*args, cwd=tmp)
        rows.append((name, *one_line(rc, err, needle)))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("errors-6", "refine on predictions without uncertainty (no ckpt=); a replay cache miss")
def _(tmp):
    rows = []
    plain = jsonl(tmp / "p.jsonl", post("p1", entities=[{"start": 0, "end": 1, "type": "PER"}]))
    rc, _, err = cli("refine", "--pred", str(plain), "--out", str(tmp / "o.jsonl"), cwd=tmp)
    rows.append(("no uncertainty", *one_line(rc, err, "no uncertainty")))
    pred = uncertain_preds(tmp / "u.jsonl", 1)
    rc, _, err = cli(
        "refine",
        "--pred",
        str(pred),
        "--out",
        str(tmp / "o.jsonl"),
        "llm.backend=replay",
        f"llm.cache_path={tmp / 'c.sqlite'}",
        "llm.model=m",
        cwd=tmp,
    )
    rows.append(("replay miss", *one_line(rc, err, "replay: no cached answer")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("errors-7", "config and usage errors of the subcommands: status 2 and one line (1 means 'no LLM answer')")
def _(tmp):
    rows = []
    posts = jsonl(tmp / "p.jsonl", post("p1"))
    for name, args, needle in [
        ("refine tau=abc", ["refine", "--pred", str(posts), "--out", "o.jsonl", "tau=abc"], "tau"),
        ("zeroshot llm.modle", ["zeroshot", "--data", str(posts), "--out", "o.jsonl", "llm.modle=x"], "modle"),
        ("pipeline missing config", ["pipeline", "--config", "missing.yaml"], "missing.yaml"),
        ("report missing folder", ["report", "missing_dir"], "missing_dir"),
        ("predict --input without --out", ["predict", "--ckpt", "x.ckpt", "--input", str(posts)], "--out"),
    ]:
        rc, _, err = cli(*args, cwd=tmp)
        rows.append((name, *one_line(rc, err, needle)))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


# ---- silently accepted bad data ----------------------------------------------------------------------------------


def _convert_jsonl(tmp: Path, *records, to: str = "jsonl") -> tuple[int, str, str]:
    src = jsonl(tmp / "in.jsonl", *records)
    out = tmp / ("o.txt" if to == "conll" else "o.jsonl")
    return cli("convert", "--format", "jsonl", "--input", str(src), "--to", to, "--out", str(out), cwd=tmp)


@check("data-1", "infinite coordinates (Infinity, 1e999) and NaN: refused on read; never written as Infinity/NaN")
def _(tmp):
    rows = []
    inf_box = post("1", entities=[{"start": 0, "end": 1, "type": "PER", "boxes": [[0, 0, float("inf"), 5]]}])
    rc, _, err = _convert_jsonl(tmp, json.dumps(inf_box))
    rows.append(("Infinity box", *one_line(rc, err, "finite")))
    rc, _, err = _convert_jsonl(tmp, json.dumps(inf_box).replace("Infinity", "1e999"))
    rows.append(("1e999 box", *one_line(rc, err, "finite")))
    rc, _, err = _convert_jsonl(tmp, json.dumps(post("1", meta={"x": 1})).replace("1}", "NaN}"))
    rows.append(("NaN in meta", *one_line(rc, err, "NaN is not a JSON number")))
    rc, _, err = _convert_jsonl(tmp, json.dumps(post("1", meta={"x": 1})).replace("1}", "1e999}"))
    written = (tmp / "o.jsonl").read_text() if (tmp / "o.jsonl").is_file() else ""
    good, seen = one_line(rc, err, "not a finite number")
    rows.append(("1e999 in meta, written", good and "Infinity" not in written, seen))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("data-2", "negative or wholly-outside boxes in JSONL and CCKS: clipped with a counted warning / refused")
def _(tmp):
    rows = []
    neg = post("1", entities=[{"start": 0, "end": 1, "type": "PER", "boxes": [[-5, 10, 50, 60]]}], image_size=[100, 80])
    rc, out, err = _convert_jsonl(tmp, neg)
    rows.append(
        (
            "jsonl negative",
            rc == 0 and "box_outside_image: 1" in out,
            f"rc {rc}, warning counted {'box_outside_image: 1' in out}",
        )
    )
    outside = post(
        "1", entities=[{"start": 0, "end": 1, "type": "PER", "boxes": [[200, 200, 300, 300]]}], image_size=[100, 80]
    )
    rc, _, err = _convert_jsonl(tmp, outside)
    rows.append(("jsonl outside", *one_line(rc, err, "entirely outside")))
    (tmp / "t.json").write_text(json.dumps({"1": {"text": "the F-35 flew"}}))
    (tmp / "e.json").write_text(
        json.dumps({"1": [{"name": "F-35", "label": "aircraft", "bnd": {"xmin": -4, "ymin": 0, "xmax": 9, "ymax": 5}}]})
    )
    rc, out, err = cli(
        "convert",
        "--format",
        "ccks",
        "--text-json",
        str(tmp / "t.json"),
        "--entity-json",
        str(tmp / "e.json"),
        "--out",
        str(tmp / "o.jsonl"),
        cwd=tmp,
    )
    rows.append(
        (
            "ccks negative",
            rc == 0 and "box_outside_image: 1" in out,
            f"rc {rc}, warning counted {'box_outside_image: 1' in out}",
        )
    )
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("data-3", "span start 0.7, id null, tokens with a tab/space written to CoNLL, 3-column CoNLL lines")
def _(tmp):
    rows = []
    rc, _, err = _convert_jsonl(tmp, post("1", entities=[{"start": 0.7, "end": 1, "type": "PER"}]))
    rows.append(("start 0.7", *one_line(rc, err, "start")))
    rc, _, err = _convert_jsonl(tmp, post(None))
    rows.append(("id null", *one_line(rc, err, "id")))
    rc, _, err = _convert_jsonl(tmp, post("1", ["New York", "is"]), to="conll")
    rows.append(("space in a token", *one_line(rc, err, "New York")))
    (tmp / "c.txt").write_text("IMGID:1\nObama\tB-PER\textra\n")
    rc, _, err = cli(
        "convert", "--format", "conll", "--txt", str(tmp / "c.txt"), "--out", str(tmp / "o.jsonl"), cwd=tmp
    )
    rows.append(("3 columns", *one_line(rc, err, f"{tmp / 'c.txt'}:2")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("data-4", "evaluate with other tokens for the same id; convert twitter-gmner without --xml-dir")
def _(tmp):
    rows = []
    gold = jsonl(tmp / "g.jsonl", post("1"))
    pred = jsonl(tmp / "p.jsonl", post("1", ["other", "words"]))
    rc, _, err = cli("evaluate", "--gold", str(gold), "--pred", str(pred), cwd=tmp)
    rows.append(("evaluate tokens", *one_line(rc, err, "tokens")))
    (tmp / "a.txt").write_text("IMGID:1\nObama\tB-PER\n")
    rc, _, err = cli(
        "convert", "--format", "twitter-gmner", "--txt", str(tmp / "a.txt"), "--out", str(tmp / "o.jsonl"), cwd=tmp
    )
    rows.append(("no --xml-dir", *one_line(rc, err, "--xml-dir is required")))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("scoring-1", "evaluate scores overlapping and duplicate predictions (a duplicate is a false positive)")
def _(tmp):
    ent = {"start": 0, "end": 1, "type": "PER"}
    gold = jsonl(tmp / "g.jsonl", post("1", entities=[ent]))
    pred = jsonl(tmp / "p.jsonl", post("1", entities=[ent, ent, {"start": 0, "end": 2, "type": "PER"}]))
    rc, out, err = cli("evaluate", "--gold", str(gold), "--pred", str(pred), "--json", cwd=tmp)
    if rc != 0:
        return False, f"rc {rc}: {err.strip().splitlines()[-1][:120]}"
    mner = json.loads(out)["mner"]
    return round(mner["precision"], 4) == 0.3333, f"rc 0, MNER precision {mner['precision']:.4f} (1 of 3)"


# ---- found while using it ------------------------------------------------------------------------------------------


@check("misc-1", "refine --gold G reaches the oracle simulation (no gold= needed) and says SIMULATION")
def _(tmp):
    gold = jsonl(
        tmp / "g.jsonl", post("p0", ["Name0", "visits", "Paris"], entities=[{"start": 0, "end": 1, "type": "ORG"}])
    )
    pred = uncertain_preds(tmp / "p.jsonl", 1)
    rc, out, err = cli(
        "refine",
        "--pred",
        str(pred),
        "--out",
        str(tmp / "o.jsonl"),
        "--gold",
        str(gold),
        "backend=oracle",
        "tau=0",
        cwd=tmp,
    )
    fixed = rc == 0 and json.loads((tmp / "o.jsonl").read_text())["entities"][0]["type"] == "ORG"
    return (
        fixed and "SIMULATION" in out,
        f"rc {rc}, oracle fixed the type {fixed}, says SIMULATION {'SIMULATION' in out}",
    )


@check("misc-2", "groundability_threshold on predictions without a groundable value: warned about")
def _(tmp):
    p, pool, img = images_and_posts(tmp)
    rc, _, err = ground(
        (p, pool, img), tmp / "g.jsonl", dead_url(), "groundability_threshold=0.5", cwd=tmp, selector="none"
    )
    warned = "groundab" in err and "WARNING" in err
    return warned, f"warning printed {warned}"


@check("misc-3", "context selection with the pool's images missing: counted and warned about")
def _(tmp):
    p, pool, img = images_and_posts(tmp)
    records = [json.loads(line) for line in pool.read_text().splitlines()]
    records[0]["image"] = "gone.png"
    jsonl(pool, *records)
    srv = ChatServer().start()
    srv.responder = lambda prompt, n: json.dumps([{"entity": "Obama", "entity_type": "PER", "bounding_box": []}])
    try:
        rc, out, err = ground((p, pool, img), tmp / "g.jsonl", srv.base_url, cwd=tmp)
    finally:
        srv.stop()
    counted = "demonstrations: 1 of 1 without an image" in out
    return counted and "WARNING" in err, f"rc {rc}, counted {counted}, warned {'WARNING' in err}"


@check("misc-4", "refineg --version; one httpx INFO line per request only with -v")
def _(tmp):
    rc, out, _ = cli("--version", cwd=tmp)
    srv = ChatServer().start()
    srv.responder = lambda prompt, n: "[]"
    try:
        pred = jsonl(tmp / "p.jsonl", post("p1"))
        _, _, err = cli(
            "zeroshot", "--data", str(pred), "--out", str(tmp / "z.jsonl"), *llm_args(srv.base_url), cwd=tmp
        )
    finally:
        srv.stop()
    httpx = sum(1 for line in err.splitlines() if "httpx" in line)
    return rc == 0 and out.startswith(
        "refineg "
    ) and httpx == 0, f"--version: {out.strip()}; httpx lines without -v: {httpx}"


@check("selftrain-1", "selftrain: a malformed or non-UTF-8 unlabelled pool fails before any training")
def _(tmp):
    rows = []
    for name, data, needle in [
        ("json", b'{"id": "u1", "tokens": ["Obama"]}\n{"id": "u2", "tokens": ["x"\n', "pool.jsonl:2: invalid JSON"),
        ("utf8", b'{"id": "u1", "tokens": ["caf\xe9"]}\n', "pool.jsonl:1: not UTF-8"),
    ]:
        sub = tmp / name
        sub.mkdir()
        (sub / "pool.jsonl").write_bytes(data)
        args = [f"data.unlabeled={sub / 'pool.jsonl'}", "logger.wandb=false", f"runs_dir={sub / 'runs'}", "run_name=r"]
        rc, _, err = cli("selftrain", *args, cwd=sub)
        good, seen = one_line(rc, err, needle)
        trained = (sub / "runs" / "r" / "round0").exists()
        rows.append((name, good and not trained, f"{seen}; round 0 trained: {trained}"))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("selftrain-2", "selftrain: an ensemble member that is not a checkpoint, or is missing, fails before training")
def _(tmp):
    (tmp / "notes.ckpt").write_text("not a checkpoint")
    rows = []
    for name, member, needle in [
        ("foreign", tmp / "notes.ckpt", "notes.ckpt: not a PyTorch checkpoint"),
        ("missing", tmp / "gone.ckpt", "selftrain.ensemble: no such checkpoint"),
    ]:
        args = ["data.unlabeled_from_train=true", "data.gold_limit=100", f"selftrain.ensemble=[{member}]"]
        args += ["logger.wandb=false", f"runs_dir={tmp / 'runs'}", f"run_name={name}"]
        rc, _, err = cli("selftrain", *args, cwd=tmp)
        good, seen = one_line(rc, err, needle)
        trained = (tmp / "runs" / name / "round0").exists()
        rows.append((name, good and not trained, f"{seen}; round 0 trained: {trained}"))
    return all(g for _, g, _ in rows), "; ".join(f"{n}: {s}" for n, _, s in rows)


@check("misc-5", "the shipped threshold sweep's source folder is one the file says how to make")
def _(tmp):
    text = (CHECKOUT / "refineg" / "configs" / "sweeps" / "thresholds.yaml").read_text()
    made = "runs/sample-crf" not in text or "train.py run_name=sample-crf" in text
    return made, f"points at runs/sample-crf: {'runs/sample-crf' in text}; says 'train.py run_name=sample-crf': {made}"


def main() -> int:
    """Runs the reproductions and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--only", nargs="*", default=None, help="run only these items (e.g. paid-3 data-1)")
    parser.add_argument("--checkout", default=str(REPO), help="the refineg checkout to audit (default: this one)")
    args = parser.parse_args()
    global CHECKOUT
    CHECKOUT = Path(args.checkout).resolve()
    rows = []
    for item, what, fn in CHECKS:
        if args.only and item not in args.only:
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"audit-{item}-") as tmp:
            try:
                good, seen = fn(Path(tmp))
            except Exception as err:  # a reproduction that cannot run is a failed row, not the end of the audit
                good, seen = False, f"reproduction raised {type(err).__name__}: {err}"
        rows.append(
            {"item": item, "what": what, "ok": good, "observed": seen, "seconds": round(time.perf_counter() - start, 1)}
        )
        print(f"{item:<11}{'ok' if good else 'FAIL':<6}{what}\n{'':<17}{seen}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    failed = [r["item"] for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} as asked" + (f"; not: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
