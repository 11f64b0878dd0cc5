"""One Python worker handed GPU addresses in turn, on TF logical devices (tests/udfs/test_devices.py).

    BATCHSCORE_FAKE_GPUS=2 python -m tests.support.device_switch MODEL ADDRESS...

Each address is one task of a reused worker, taken through the engine's own steps in the
order `scoring.task_predictor` takes them (`devices.pin_task`, `devices.placed`,
`model_cache.get_predict_fn`). Spark cannot be made to hand one worker two addresses in a
set order, so this fresh process plays the worker: its TF runtime has not started, as in a
forked Python worker. Prints one JSON line per task: the device, the model loads so far,
the devices holding a copy, where the copy's variables sit, which loaded copies are still
alive, and the predictions.
"""
from __future__ import annotations

import gc
import json
import logging
import sys
import weakref
from typing import Any

from batchscore.udfs.model import cache as model_cache
from batchscore.udfs.model import devices
from tests import support

KEY = "multi/serving_default"
ROWS = 40


def run_task(model: str, address: str, copies: dict[str, Any]) -> dict[str, Any]:
    """One task on `address`; `copies`: device -> weak reference to each copy loaded so far."""
    loaded: list[Any] = []

    def load() -> tuple[object, model_cache.PredictFn]:
        obj, predict = model_cache.load_saved_model(model, "serving_default")
        loaded.append(obj)
        return obj, predict

    device = devices.pin_task([address], memory_mb=256)
    predict = model_cache.get_predict_fn(KEY, devices.placed(load, device), device=device.name)
    out = predict(support.multi_inputs(support.multi_table(ROWS)))
    row: dict[str, Any] = {"address": address, "name": device.name, "label": device.label,
                           "loads": model_cache.load_count(), "cached": model_cache.cached_devices(KEY)}
    if loaded:
        row["variables"] = sorted({loaded[0].w_img.device, loaded[0].w_num.device})
        copies[f"{device.name}#{row['loads']}"] = weakref.ref(loaded[0].w_img)
        loaded.clear()
    gc.collect()
    row["alive"] = sorted(k for k, ref in copies.items() if ref() is not None)
    row["score"] = out["score"].tolist()
    row["label_out"] = [s.decode() for s in out["label"].tolist()]
    return row


def main(argv: list[str]) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model, addresses = argv[0], argv[1:]
    copies: dict[str, Any] = {}
    for address in addresses:
        print(json.dumps(run_task(model, address, copies)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
