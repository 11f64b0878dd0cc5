"""Make the demo: a credit-default-like table (partitioned Parquet) and a Keras model trained on it.

`python -m batchscore.demo_data --out data/demo [--rows 1000000]` writes
`<out>/features/as_of_date=YYYY-MM-DD/*.parquet` and `<out>/model/` (a SavedModel)
unless they exist. The label depends on the features through a known logistic
model, so a trained model reaches a real AUC.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from batchscore.session.tf_logs import quiet_tensorflow_start

NUMERIC = [
    "age", "income", "debt_ratio", "credit_lines", "utilization",
    "late_30_59", "late_60_89", "late_90", "months_employed", "loan_amount",
]
CATEGORICAL = {
    "region": ["north", "south", "east", "west", "central"],
    "employment_type": ["salaried", "self_employed", "contract", "unemployed"],
    "home_ownership": ["own", "mortgage", "rent"],
}
CAT_EFFECT = {
    "region": [0.0, 0.2, -0.1, 0.1, -0.2],
    "employment_type": [-0.3, 0.2, 0.3, 1.0],
    "home_ownership": [-0.4, -0.1, 0.3],
}
DATES = ["2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31", "2026-11-30"]
LABEL = "defaulted"


def make_table(rows: int, seed: int = 7) -> pa.Table:
    """The demo table: id, as_of_date, 10 numeric and 3 categorical features, the label."""
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 80, rows).astype(np.float64)
    income = np.round(rng.lognormal(10.8, 0.5, rows), 2)
    debt_ratio = np.clip(rng.beta(2, 5, rows) * 1.5, 0, None)
    credit_lines = rng.poisson(6, rows).astype(np.float64)
    utilization = np.clip(rng.beta(2, 3, rows), 0, 1)
    late_30 = rng.poisson(0.3, rows).astype(np.float64)
    late_60 = rng.poisson(0.1, rows).astype(np.float64)
    late_90 = rng.poisson(0.05, rows).astype(np.float64)
    months_employed = rng.integers(0, 360, rows).astype(np.float64)
    loan_amount = np.round(rng.lognormal(9.5, 0.8, rows), 2)
    cats = {k: rng.integers(0, len(v), rows) for k, v in CATEGORICAL.items()}
    logit = (
        -2.2
        - 0.02 * (age - 45)
        - 0.6 * (np.log(income) - 10.8)
        + 1.5 * (debt_ratio - 0.4)
        + 2.0 * (utilization - 0.4)
        + 0.6 * late_30 + 1.0 * late_60 + 1.6 * late_90
        - 0.002 * months_employed
        + 0.3 * (np.log(loan_amount) - 9.5)
        + sum(np.asarray(CAT_EFFECT[k])[cats[k]] for k in CATEGORICAL)
    )
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    cols: dict[str, pa.Array] = {
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "as_of_date": pa.array(np.asarray(DATES)[rng.integers(0, len(DATES), rows)]),
    }
    for name, v in zip(NUMERIC, [age, income, debt_ratio, credit_lines, utilization, late_30, late_60,
                                 late_90, months_employed, loan_amount], strict=True):
        cols[name] = pa.array(v.astype(np.float32) if name != "income" else v)  # income as double
    for k, levels in CATEGORICAL.items():
        cols[k] = pa.array(np.asarray(levels, dtype=object)[cats[k]], type=pa.string())
    cols[LABEL] = pa.array(label)
    return pa.table(cols)


def write_features(table: pa.Table, path: str) -> None:
    """Hive-partitioned by as_of_date, several files per partition, as Spark would write."""
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.write_dataset(
        table, tmp, format="parquet", partitioning=["as_of_date"], partitioning_flavor="hive",
        max_rows_per_file=100_000, max_rows_per_group=50_000, existing_data_behavior="overwrite_or_ignore",
        basename_template="part-{i}.parquet",
    )
    os.replace(tmp, path)


def train_model(table: pa.Table, path: str, *, epochs: int = 2, sample: int = 200_000, seed: int = 7) -> None:
    """A small Keras MLP: normalised numeric features + one-hot categoricals -> P(default)."""
    quiet_tensorflow_start()
    import keras  # noqa: PLC0415 - seconds of import: only where a model is built or loaded
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model is built or loaded

    keras.utils.set_random_seed(seed)
    t = table.slice(0, min(sample, table.num_rows))
    x_num = np.stack([t.column(c).to_numpy().astype(np.float32) for c in NUMERIC], axis=1)
    x_num[:, 1] = np.log(x_num[:, 1])  # income and loan amount are log-normal
    x_num[:, 9] = np.log(x_num[:, 9])
    y = t.column(LABEL).to_numpy().astype(np.float32)

    numeric = keras.Input(shape=(len(NUMERIC),), name="numeric")
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(x_num)
    feats = [norm(_log_columns(numeric, tf))]
    inputs = {"numeric": numeric}
    for k, vocab in CATEGORICAL.items():
        inp = keras.Input(shape=(), dtype="string", name=k)
        inputs[k] = inp
        feats.append(keras.layers.StringLookup(vocabulary=vocab, output_mode="one_hot", name=f"{k}_onehot")(inp))
    h = keras.layers.Concatenate()(feats)
    h = keras.layers.Dense(64, activation="relu")(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="default_probability")(h)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    x = {"numeric": np.stack([t.column(c).to_numpy().astype(np.float32) for c in NUMERIC], axis=1)}
    for k in CATEGORICAL:
        x[k] = np.asarray(t.column(k).to_pylist(), dtype=object)
    model.fit(x, y, batch_size=1024, epochs=epochs, verbose=0, validation_split=0.1)
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.export(tmp, verbose=False)
    os.replace(tmp, path)


def _log_columns(numeric, tf):
    """log() of the income and loan-amount columns, inside the model so serving matches."""
    import keras  # noqa: PLC0415 - seconds of import: only where a model is built or loaded

    def f(x):
        mask = tf.constant([[0, 1, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=tf.float32)
        logged = tf.math.log(tf.maximum(x, 1e-3))
        return x * (1 - mask) + logged * mask

    return keras.layers.Lambda(f, name="log_money")(numeric)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batchscore.demo_data", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/demo")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    args = p.parse_args(argv)
    features, model = os.path.join(args.out, "features"), os.path.join(args.out, "model")
    table = None
    if args.force or not os.path.isdir(features):
        table = make_table(args.rows)
        os.makedirs(args.out, exist_ok=True)
        write_features(table, features)
        print(f"demo: wrote {args.rows:,} rows to {features}")
    if args.force or not os.path.isdir(model):
        table = table if table is not None else make_table(min(args.rows, 200_000))
        train_model(table, model, epochs=args.epochs)
        print(f"demo: trained and exported the model to {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
