"""A diagnostic of one kind of the demo benchmark: R@1 per transition (the reference image's state -> the target's,
read from the image names `<stamp>-<state>`), for the baselines and the demo's Combiners. It chooses nothing.

    python -m demo.transitions [--kind orientation] [--output_dir outputs/demo]

Each transition's queries are written as a CIRR folder of their own (the kind's images linked, not copied) under a
temporary folder and evaluated with the CIRR protocol, as `make demo` evaluates the whole kind.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CAPTIONS = Path("cirr") / "captions" / "cap.rc2.val.json"


@dataclass
class TransitionArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "The folder `make demo` wrote."})
    kind: str = field(default="orientation", metadata={"help": "The benchmark kind to break down."})
    combiners: list[str] = field(default_factory=lambda: ["scot", "scot_novelty_gate"], metadata={
        "help": "The demo's Combiners to score (folders combiner-<name>)."})


def state(name: str) -> str:
    return name.rsplit("-", 1)[-1]


def split_by_transition(kind_dir: Path, scratch: Path) -> dict[str, Path]:
    """`{"<reference state> -> <target state>": CIRR folder}` holding that transition's queries of `kind_dir`."""
    queries = json.loads((kind_dir / CAPTIONS).read_text())
    groups = defaultdict(list)
    for query in queries:
        groups[f"{state(query['reference'])} -> {state(query['target_hard'])}"].append(query)
    folders = {}
    for number, (transition, members) in enumerate(sorted(groups.items())):
        folder = scratch / f"transition-{number}"
        (folder / CAPTIONS).parent.mkdir(parents=True)
        (folder / CAPTIONS).write_text(json.dumps(members))
        (folder / "cirr" / "image_splits").symlink_to((kind_dir / "cirr" / "image_splits").resolve())
        for entry in kind_dir.iterdir():  # the image folders
            if entry.name != "cirr":
                (folder / entry.name).symlink_to(entry.resolve())
        folders[transition] = folder
    return folders


def run(args: TransitionArguments) -> dict:
    from demo.report import BASELINES
    from modeling_scot import ScotModel, ScotProcessor
    from scot_eval.evaluation import evaluate_prepared, prepare_benchmark

    root = Path(args.output_dir)
    models = {name: ScotModel.from_pretrained(root / f"combiner-{name}").eval() for name in args.combiners}
    scot = next(iter(models.values()))
    processor = ScotProcessor.from_pretrained(root / f"combiner-{args.combiners[0]}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for transition, folder in split_by_transition(root / "benchmark" / args.kind, Path(scratch)).items():
            prepared = prepare_benchmark(scot, processor, "cirr", folder, "val", show_progress=False)
            row = {"queries": len(prepared[0].query_ids)}
            for method in BASELINES:
                row[method] = evaluate_prepared(scot, prepared, method, processor=processor).metrics["R@1"]
            for name, model in models.items():
                row[name] = evaluate_prepared(model, prepared, "scot", processor=processor).metrics["R@1"]
            results[transition] = row
    return results


def format_table(results: dict) -> str:
    methods = [key for key in next(iter(results.values())) if key != "queries"]
    lines = ["| transition | queries | " + " | ".join(methods) + " |", "| --- | ---: |" + " ---: |" * len(methods)]
    for transition, row in results.items():
        lines.append(f"| {transition} | {row['queries']} |" + "".join(f" {row[m]:.1f} |" for m in methods))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TransitionArguments).parse_args_into_dataclasses(argv)
    print(f"R@1 per transition of the {args.kind!r} kind:\n")
    print(format_table(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
