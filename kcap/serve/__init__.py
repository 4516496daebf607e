"""`kcap serve`: a SavedModel written by `kcap export` behind a web page and a batching JSON API.

`kcap.serve.app.build_app` makes the Starlette app (its docstring lists the
routes and their JSON); `kcap.serve.model.ServedModel` runs the export's
endpoints with TensorFlow alone; `kcap.serve.batching.Batcher` captions
concurrent requests together. Nothing here imports kcap's model code
(`setup.cfg`'s import contracts hold it to that). Needs `pip install 'kcap[serve]'`.
"""
