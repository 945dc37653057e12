"""LoraConfig._register_custom_module (peft's custom LoRA modules): the user's layer class wraps the
module types it names, saves and loads in peft's format, and peft loads the file with its own class."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

import peftkit as pk
from peftkit.methods.lora_layers import LoraLinear


class MyModule(nn.Module):
    """A linear that is no nn.Linear: LoRA has no layer of its own for it."""

    def __init__(self):
        super().__init__()
        self.in_features, self.out_features = 10, 20
        self.weight = nn.Parameter(torch.randn(20, 10))

    def forward(self, x):
        return nn.functional.linear(x, self.weight)


class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.my_module, self.lin1 = nn.Linear(10, 10), MyModule(), nn.Linear(20, 2)

    def forward(self, x):
        return self.lin1(self.my_module(self.lin0(x)))


class MyLora(LoraLinear):
    pass


def _config(lib, my_lora, **kwargs):
    config = lib.LoraConfig(target_modules=["lin0", "my_module", "lin1"], init_lora_weights=False, **kwargs)
    config._register_custom_module({MyModule: my_lora})
    return config


def test_custom_layer_is_used_with_peft_s_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pk.get_peft_model(MyModel(), _config(pk, MyLora))
    assert isinstance(model.base_model.model.my_module, MyLora)
    assert type(model.base_model.model.lin0) is LoraLinear
    assert str(caught[-1].message) == f"Unsupported layer type '{MyModule}' encountered, proceed at your own risk."


def test_custom_layer_saves_and_peft_loads_it(tmp_path):
    from peft import PeftModel as PeftsModel, LoraConfig as PeftsConfig
    from peft.tuners import lora

    class PeftsLora(lora.Linear):
        pass

    torch.manual_seed(0)
    base = MyModel()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = pk.get_peft_model(base, _config(pk, MyLora)).eval()
    x = torch.randn(4, 10)
    expected = model(x)
    model.save_pretrained(tmp_path)

    again = MyModel()
    again.load_state_dict(state)
    config = pk.LoraConfig.from_pretrained(tmp_path)
    config._register_custom_module({MyModule: MyLora})
    ours = pk.PeftModel.from_pretrained(again, tmp_path, config=config).eval()
    assert isinstance(ours.base_model.model.my_module, MyLora)
    torch.testing.assert_close(ours(x), expected)

    theirs_base = MyModel()
    theirs_base.load_state_dict(state)
    peft_config = PeftsConfig.from_pretrained(tmp_path)
    peft_config._register_custom_module({MyModule: PeftsLora})
    theirs = PeftsModel.from_pretrained(theirs_base, tmp_path, config=peft_config).eval()
    torch.testing.assert_close(theirs(x), expected)
