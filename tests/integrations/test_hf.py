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


@pytest.mark.slow
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


def _bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _trainer(model, pruner, folder, max_steps=12, save_steps=6):
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="steps", save_steps=save_steps, logging_strategy="no",
        disable_tqdm=True, seed=0, data_seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=Dataset(), callbacks=[PruningCallback(pruner)])


def _schedule():
    return pk.schedules.PolynomialDecay(0.0, 0.6, 0, 8, frequency=2)


def test_masked_model_saves_plain_names_that_from_pretrained_loads_with_zeros(tmp_path):
    model = _bert().eval()
    pk.prune(model, 0.7, include="bert.encoder.*")
    keys = model.state_dict().keys()
    assert not any(".parametrizations." in k for k in keys)
    assert "bert.encoder.layer.0.attention.self.query.weight_mask" in keys
    model.save_pretrained(tmp_path / "saved")
    plain, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "saved",
                                                                            output_loading_info=True)
    assert not info["missing_keys"]
    assert pk.masks(plain) == {}
    nz = pk.sparsity_report(model).nonzeros
    assert pk.sparsity_report(plain).nonzeros == nz
    ids = torch.randint(1, 100, (2, 12))
    torch.testing.assert_close(plain.eval()(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.slow
def test_trainer_checkpoint_reloads_and_resumes_with_its_masks(tmp_path):
    full = _bert()
    pruner = pk.Pruner(full, _schedule(), include="bert.encoder.*")
    _trainer(full, pruner, tmp_path / "full").train()
    checkpoint = tmp_path / "full" / "checkpoint-6"
    assert (checkpoint / "prunekit_pruner.json").exists()

    reloaded = transformers.BertForSequenceClassification.from_pretrained(checkpoint)  # the ordinary HF call
    report = pk.sparsity_report(reloaded)
    encoder = [r for r in report.rows if r.name.startswith("bert.encoder")]
    zeros = sum(r.numel - r.nonzeros for r in encoder)
    # after 6 optimizer steps the Pruner has run steps 0-5: the last update was at step 4
    assert zeros == round(_schedule().sparsity_at(4) * sum(r.numel for r in encoder))

    resumed = _bert(seed=1)  # other random weights: all of them must come from the checkpoint
    again = pk.Pruner(resumed, _schedule(), include="bert.encoder.*")
    _trainer(resumed, again, tmp_path / "full").train(resume_from_checkpoint=str(checkpoint))
    assert again.step_count == 12 and [r["step"] for r in again.log] == [0, 2, 4, 6, 8]
    for name, mask in pk.masks(full).items():
        assert torch.equal(pk.masks(resumed)[name], mask), name
    assert pk.sparsity_report(resumed).nonzeros == pk.sparsity_report(full).nonzeros
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_masked_state_dict_loads_into_plain_and_masked_models():
    model = _bert()
    pk.prune(model, 0.5, include="bert.encoder.*")
    state = model.state_dict()
    plain = _bert(seed=2)
    result = plain.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == sorted(k for k in state if k.endswith("_mask")) and not result.missing_keys
    assert pk.sparsity_report(plain).nonzeros == pk.sparsity_report(model).nonzeros
    masked = _bert(seed=3)
    pk.prune(masked, 0.2, include="bert.encoder.*")
    masked.load_state_dict(state)  # strict: every key maps onto an original or a mask
    for name, mask in pk.masks(model).items():
        assert torch.equal(pk.masks(masked)[name], mask)
    without_masks = {k: v for k, v in state.items() if not k.endswith("_mask")}
    with pytest.raises(RuntimeError, match="query.weight_mask"):  # a missing mask is named as the file spells it
        masked.load_state_dict(without_masks)
