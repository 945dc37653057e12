"""P-tuning: interop with peft both ways (MLP and LSTM encoders; Llama, BERT classifier, T5), the
computed prompt as checkpoint, the prompt-method contract, errors, and a training run."""

from __future__ import annotations

import pytest
import torch
from contract_helpers import train_losses
from prompt_checks import check_contract, check_peft_to_peftkit, check_peftkit_to_peft, perturb
from tiny_models import example_inputs, make_model, model_outputs

import peftkit as pk

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),  # peft calls it
]

CASES = {
    "llama_mlp": ("llama", {"num_virtual_tokens": 4}),
    "llama_lstm": ("llama", {"num_virtual_tokens": 4, "encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 16}),
    "gpt2_mlp_hidden": ("gpt2", {"num_virtual_tokens": 3, "encoder_hidden_size": 8}),
    "bert_mlp": ("bert", {"num_virtual_tokens": 4}),
    "t5_lstm": ("t5", {"num_virtual_tokens": 2, "encoder_reparameterization_type": "LSTM", "encoder_num_layers": 1}),
}


@pytest.mark.parametrize("case", CASES)
def test_peft_adapter_loads_in_peftkit(case, tmp_path):
    family, kwargs = CASES[case]
    check_peft_to_peftkit(family, "PromptEncoderConfig", kwargs, tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_peftkit_adapter_loads_in_peft(case, tmp_path):
    family, kwargs = CASES[case]
    ours = check_peftkit_to_peft(family, "PromptEncoderConfig", kwargs, tmp_path)
    assert ours.prompt_encoder["default"].has_head  # trained through the encoder, saved as its output


@pytest.mark.parametrize("encoder", ["MLP", "LSTM"])
def test_contract(encoder, tmp_path):
    config = pk.PromptEncoderConfig(num_virtual_tokens=3, task_type="CAUSAL_LM", encoder_reparameterization_type=encoder,
                                    encoder_hidden_size=12)
    check_contract(config, "llama", tmp_path)


def test_encoder_layout_and_saved_prompt(tmp_path):
    model = pk.get_peft_model(make_model("llama"), pk.PromptEncoderConfig(
        num_virtual_tokens=3, task_type="CAUSAL_LM", encoder_reparameterization_type="LSTM", encoder_hidden_size=12))
    names = {n for n, _ in model.named_parameters() if n.startswith("prompt_encoder")}
    assert {n.split(".")[2] for n in names} == {"embedding", "lstm_head", "mlp_head"}  # peft's attribute names
    assert model.peft_config["default"].encoder_hidden_size == 12 and model.peft_config["default"].token_dim == 32
    perturb(model, seed=4)
    saved = pk.get_peft_model_state_dict(model)
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape == (3, 32)
    torch.testing.assert_close(saved["prompt_embeddings"], model.prompt_encoder["default"].prompt(), atol=1e-6, rtol=0)


def test_loaded_adapter_holds_the_prompt_and_trains_it(tmp_path):
    model = pk.get_peft_model(make_model("llama"), pk.PromptEncoderConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    perturb(model, seed=5)
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(make_model("llama"), tmp_path, is_trainable=True)
    assert not loaded.prompt_encoder["default"].has_head
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]
    inputs = example_inputs("llama")
    torch.testing.assert_close(model_outputs(loaded, inputs)["logits"], model_outputs(model, inputs)["logits"], atol=1e-6, rtol=0)


def test_a_saved_prompt_cannot_go_into_a_trainable_encoder(tmp_path):
    model = pk.get_peft_model(make_model("llama"), pk.PromptEncoderConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    saved = pk.get_peft_model_state_dict(model)
    with pytest.raises(pk.CheckpointError, match="computed by adapter 'default'.*from_pretrained"):
        pk.set_peft_model_state_dict(model, saved)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_virtual_tokens=0), "num_virtual_tokens"),
        (dict(num_virtual_tokens=4, encoder_reparameterization_type="GRU"), "encoder_reparameterization_type"),
        (dict(num_virtual_tokens=4, encoder_hidden_size=0), "encoder_hidden_size"),
        (dict(num_virtual_tokens=4, encoder_num_layers=0), "encoder_num_layers"),
        (dict(num_virtual_tokens=4, encoder_dropout=1.5), "encoder_dropout"),
        (dict(num_virtual_tokens=4, encoder_size=8), "encoder_size.*did you mean"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(pk.ConfigError, match=field):
        pk.PromptEncoderConfig(task_type="CAUSAL_LM", **kwargs)


def test_unreadable_model_shape_names_the_field():
    class Plain(torch.nn.Module):  # no transformers config to read the width from
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.embed

    model = Plain()
    with pytest.raises(pk.ConfigError, match="num_layers.*set num_layers"):
        pk.get_peft_model(model, pk.PromptEncoderConfig(num_virtual_tokens=2, task_type="FEATURE_EXTRACTION"))
    assert all(p.requires_grad for p in model.parameters())


def test_peftkit_train_loss_falls(tmp_path):
    losses = train_losses(tmp_path, {"method": "p_tuning", "num_virtual_tokens": 8}, max_steps=12, lr=3e-2)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses


def test_encoders_build_from_their_config_alone_as_in_peft():
    # peft builds PromptEncoder(config) / PrefixEncoder(config) / PromptEmbedding(config, word_embeddings)
    from peftkit.methods.p_tuning import PromptEncoder
    from peftkit.methods.prefix_tuning import PrefixEncoder
    from peftkit.methods.prompt_tuning import PromptEmbedding

    shape = dict(num_virtual_tokens=4, token_dim=8, num_transformer_submodules=1)
    encoder = PromptEncoder(pk.PromptEncoderConfig(encoder_hidden_size=6, **shape))
    assert encoder(torch.arange(4)).shape == (4, 8)
    prefix = PrefixEncoder(pk.PrefixTuningConfig(num_layers=2, num_attention_heads=2, **shape))
    assert prefix.embedding.weight.shape == (4, 2 * 2 * 8)
    words = torch.nn.Embedding(10, 8)
    config = pk.PromptTuningConfig(prompt_tuning_init="SAMPLE_VOCAB", **shape)
    embedding = PromptEmbedding(config, words)
    rows = embedding.embedding.weight
    assert all(any(torch.equal(row, word) for word in words.weight) for row in rows)  # rows drawn from the vocabulary


def test_mlp_encoder_warns_that_encoder_num_layers_is_ignored():
    from peftkit.methods.p_tuning import PromptEncoder

    config = pk.PromptEncoderConfig(num_virtual_tokens=2, token_dim=8, num_transformer_submodules=1, encoder_num_layers=5)
    with pytest.warns(UserWarning, match="`encoder_num_layers` is ignored"):
        PromptEncoder(config)
