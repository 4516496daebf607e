"""Hyperparameter search for kcap captioners with keras-tuner (`kcap tune`).

```python
from kcap.training.config import TrainConfig
from tuning.search import search, format_summary

result = search(TrainConfig(data="synthetic", epochs=2, cache_features=True), "tune", max_trials=4)
print(format_summary(result.summary))      # also in tune/summary.json
# tune/best_hyperparameters.json → `kcap train --hparams tune/best_hyperparameters.json ...`
```

`tuning.hypermodel` holds `CaptionerHyperModel` and the JSON search space,
`tuning.search` the tuners, the resumable search and its results,
`tuning.command` the `kcap tune` command line.
"""

import kcap  # noqa: F401  sets KERAS_BACKEND=tensorflow before keras is imported
