"""Every Python snippet of docs/extending.md runs as written, each in a fresh interpreter (registries are global)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"

RUNNER = """
import sys, traceback
blocks = {blocks!r}
failed = 0
for title, code in blocks:
    pid = __import__("os").fork()
    if pid == 0:
        try:
            exec(compile(code, f"docs/extending.md [{{title}}]", "exec"), {{"__name__": "__snippet__"}})
        except BaseException:
            traceback.print_exc()
            __import__("os")._exit(1)
        __import__("os")._exit(0)
    _, status = __import__("os").waitpid(pid, 0)
    print(f"SNIPPET {{title}}: {{'ok' if status == 0 else 'FAILED'}}", flush=True)
    failed += status != 0
sys.exit(1 if failed else 0)
"""


def snippets():
    text = DOC.read_text()
    out = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        for code in re.findall(r"```python\n(.*?)```", section, flags=re.S):
            out.append((title, code))
    return out


def test_every_section_has_a_snippet():
    titles = [t for t, _ in snippets()]
    assert titles == [
        "A backbone",
        "A tagging head",
        "An image encoder",
        "A groundability head",
        "An uncertainty head",
        "An uncertainty head",  # a head that scores, then one that is fitted (fit / save / load)
        "An LLM / MLLM backend",
        "A data format",
        "A synthesizer",
        "A refinement backend",
        "A refinement mode",
        "A grounder",
        "A similarity rule",
        "A proposal source",
    ]


def registries_in_package():
    """``{variable name: registry kind}`` of every ``NAME = Registry("kind")`` in the package's source."""
    found = {}
    for path in (ROOT / "refineg").rglob("*.py"):
        for name, kind in re.findall(r'^([A-Z_]+) = Registry\("([^"]+)"\)', path.read_text(), flags=re.M):
            found[name] = kind
    return found


def test_every_registry_has_a_row_and_a_section():
    registries = registries_in_package()
    assert len(registries) == 13, registries
    table = {
        row.split("|")[2].strip().strip("`"): row.split("|")[5].strip()
        for row in DOC.read_text().splitlines()
        if row.startswith("| ") and row.count("|") == 6 and "`" in row.split("|")[2]
    }
    assert set(table) == set(registries)
    titles = {t for t, _ in snippets()}
    for name, link in table.items():
        title = re.match(r"\[(.+)\]\(#", link).group(1)
        assert title in titles, (name, title)


def test_snippets_run():
    # torch and the project are imported once, then each snippet runs in a forked child (fresh registries)
    preamble = (
        "import torch, transformers, refineg.modules.tagger_module, refineg.llm, refineg.stages.grounding, "
        "refineg.stages.refinement, refineg.stages.synthesis, refineg.inference.uncertainty\n"
    )
    script = preamble + "torch.set_num_threads(1)\n" + RUNNER.format(blocks=snippets())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    assert report.count(": ok") == len(snippets()), report[-6000:]
