"""The Hugging Face Trainer callback drives the Pruner inside Trainer.train()."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import prunekit as pk  # noqa: E402
from prunekit.integrations.hf import PruningCallback  # noqa: E402


class Dataset(torch.utils.data.Dataset):
    def __init__(self, n=64, vocab=100, length=12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > vocab // 2).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def test_trainer_callback_prunes_on_schedule_and_keeps_zeros(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    pruner = pk.Pruner(model, pk.schedules.PolynomialDecay(0.0, 0.6, 0, 8, frequency=2), include="bert.encoder.*")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Dataset(),
                                   callbacks=[PruningCallback(pruner, finalize_at_end=True)])
    trainer.train()
    assert [r["step"] for r in pruner.log] == [0, 2, 4, 6, 8]
    assert pruner.optimizer is not None and pruner.step_count == 12
    report = pk.sparsity_report(model)
    encoder = [r for r in report.rows if r.name.startswith("bert.encoder")]
    zeros = sum(r.numel - r.nonzeros for r in encoder)
    assert zeros == round(0.6 * sum(r.numel for r in encoder))
    assert pk.masks(model) == {}  # finalized at the end of training
    with pytest.raises(TypeError, match="prunekit.Pruner"):
        PruningCallback("pruner")
