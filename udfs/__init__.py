"""Code that runs inside Spark's Python workers.

- `lanes`: the task functions of the two scoring lanes, and the warm-up task
- `host`: the executor's model host (`model.sharing: executor`), its client and wire format
- `batches`: Arrow columns -> checked tensors -> Arrow columns, re-chunked to the batch size
- `model`: the model's signature, its files on the executor, loading once per worker, devices
- `daemon`: Spark's Python daemon with TensorFlow imported before it forks the workers

It imports `batchscore.core` and nothing of the driver-side engine (`make lint` checks).
"""
