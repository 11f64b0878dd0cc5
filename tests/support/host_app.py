"""A Spark application of its own for the model-host lifecycle tests (tests/processes/test_model_host.py).

    python -m tests.support.host_app INPUT MODEL OUTPUT

Builds a `local[2]` session, scores INPUT with MODEL under `model.sharing: executor`,
prints `scored <model_loads>`, then follows its stdin: the line `stop` stops the
session (the application ends, the driver process stays) and prints `stopped`;
end-of-file exits. The test kills the JVM or stops the session and watches the host.
"""
from __future__ import annotations

import sys

from batchscore.demo_data import NUMERIC
from batchscore.run.steps import run_scoring
from batchscore.session.builder import build_session
from tests import support


def main(argv: list[str]) -> int:
    in_path, model, out = argv
    spark = build_session({"spark.master": "local[2]", "spark.ui.enabled": False,
                           "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"},
                          app_name="batchscore-host-app")
    spark.sparkContext.setLogLevel("ERROR")
    spec = support.job_spec(in_path, model, out, "input.columns={numeric: [" + ", ".join(NUMERIC) + "]}",
                            "output.keep_columns=[id]", "model.batch_size=64", "model.sharing=executor")
    manifest = run_scoring(spark, spec)
    print(f"scored {manifest.model_loads}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            spark.stop()
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
