"""Trains the tiny model's adapter on fixed pairs and writes each step's metrics (run by test_ddp.py).

    python tests/ddp_train.py MODEL_DIR OUT.json                       # one process
    accelerate launch --cpu --num_processes 2 tests/ddp_train.py ...   # DDP over gloo
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from lm.loading import load_model, load_tokenizer  # noqa: E402
from test_dpo import make_pairs  # noqa: E402
from training.trainer import DPOParams, add_lora, train_dpo  # noqa: E402

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
tokenizer = load_tokenizer(model_dir)
pairs = make_pairs(tokenizer, 11)  # the last step of an epoch holds 3 pairs: 2 + 1 and a filler
params = DPOParams(batch_size=4, micro_batch_size=1, epochs=2, lora_r=4, learning_rate=1e-2, reference="forward")
model = add_lora(load_model(model_dir), params, seed=0)
result = train_dpo(model, pairs, params, tokenizer.pad_token_id, seed=0)
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
if int(os.environ.get("RANK", "0")) == 0:
    out.write_text(json.dumps({"world": world, "metrics": [m.model_dump() for m in result.metrics]}))
if torch.distributed.is_initialized():
    # Leaving gloo's threads to interpreter shutdown can abort the process ("terminate called
    # without an active exception"); the launcher owns the process group, so it closes it.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
