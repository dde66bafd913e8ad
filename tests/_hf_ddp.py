"""One rank of a 2-process Hugging Face ``TunedTrainer`` run on the CPU (gloo).

``python -m tests._hf_ddp OUT_DIR`` under torchrun's environment
(``tests/_ranks.py``): every rank writes ``OUT_DIR/rank-RANK.json`` with the LR
of every step and a digest of the final weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from adatune.integrations.huggingface import TunedTrainer  # noqa: E402


def main(out: Path) -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (96, 8), generator=g)
    labels = (ids[:, 0] > 20).long()
    rows = [{"input_ids": ids[i], "labels": labels[i]} for i in range(96)]
    args = transformers.TrainingArguments(
        output_dir=str(out / "run"), num_train_epochs=2, per_device_train_batch_size=4,
        per_device_eval_batch_size=8, learning_rate=0.01, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, ddp_backend="gloo", logging_strategy="no")
    trainer = TunedTrainer(model=model, args=args, train_dataset=rows[:64],
                           eval_dataset=rows[64:], tuner="marthe")
    trainer.train()
    weights = float(sum(p.detach().double().sum() for p in model.parameters()))
    rank = int(os.environ.get("RANK", 0))
    (out / f"rank-{rank}.json").write_text(json.dumps(
        {"lrs": trainer.lrs, "weights": weights, "world": trainer.args.world_size,
         "group": torch.distributed.is_initialized()}))
    # The framework leaves its process group up; a rank that exits with gloo's threads still
    # running can abort ("terminate called without an active exception"), so close it.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
