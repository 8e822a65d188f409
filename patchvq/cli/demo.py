"""`patchvq demo`: generate the synthetic dataset, train pvqae on each category, test, summarise."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from patchvq.cli import output

# A smaller setting than the defaults so that three categories train in a few minutes on 2 cores.
DEMO_SETTINGS = {"image_size": 128, "epochs": 12, "prior_epochs": 20, "batch_size": 8}
DEMO_CATEGORIES = ("metal", "fabric", "tile")


def run_demo(out: Path, quiet: bool) -> int:
    from patchvq.cli.commands import _bar
    from patchvq.data import open_dataset
    from patchvq.data.synthetic import generate
    from patchvq.engine import Run, evaluate, fit
    from patchvq.engine.checkpoint import write_json
    from patchvq.models.config import Config
    from patchvq.report import ReportWriter

    start = time.perf_counter()
    data = out / "data"
    if not (data / DEMO_CATEGORIES[0]).is_dir():
        print(f"writing the synthetic dataset to {data} ...", file=sys.stderr)
        generate(data, seed=0, image_size=256, categories=list(DEMO_CATEGORIES))
    config = Config(**DEMO_SETTINGS)
    summary = {}
    for category in DEMO_CATEGORIES:
        run_dir = out / "runs" / category
        if (run_dir / "run.json").exists():
            run = Run.load(run_dir)
        else:
            train = open_dataset(data / category, "mvtec", "train", image_size=config.image_size)
            run = fit(train, config, run_dir, resume=(run_dir / "checkpoint.safetensors").exists(),
                      progress=not quiet)
        test = open_dataset(data / category, "mvtec", "test", image_size=config.image_size)
        report = out / "reports" / category
        writer = ReportWriter(report, run, title=f"demo: {category}")
        result = evaluate(run, test, progress=_bar(quiet), on_batch=writer.add)
        writer.finish(result)
        write_json(report / "metrics.json", dict(result.metrics, model=run.config.model, data=str(data / category)))
        output.write_csv(report / "scores.csv", result.rows, ["path", "label", "defect", "score", "verdict"])
        summary[category] = result.metrics
        print(f"{category}:")
        print(output.metrics_table(result.metrics))
    mean = sum(m["image_auroc"] for m in summary.values()) / len(summary)
    print(f"mean image AUROC {mean:.4f} over {', '.join(summary)}; {time.perf_counter() - start:.0f} s in all")
    print(f"data in {data}, runs in {out / 'runs'}, metrics and HTML reports in {out / 'reports'}/*/index.html")
    return 0
