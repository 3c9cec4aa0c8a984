"""Run by ``torchrun`` in test_proxy_ddp.py: one DDP proxy run, each rank writes its result."""

import dataclasses
import json
import os
import sys

from proxy_models import PreparedCorpus, TrainConfig, train_proxy

shards, out_dir, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
result = train_proxy(TrainConfig(**config), PreparedCorpus.load(shards), mixture={"code": 0.5, "news": 0.3, "prose": 0.2})
with open(os.path.join(out_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(dataclasses.asdict(result), f)
