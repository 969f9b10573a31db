"""The spec contract's building blocks: how forward() is called, how its outputs are read, whose
code a warning comes from, and the ExportSpec's own validation."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
import transformers
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UsageError
from edgemm.export.contract import SpecContractError, plan_forward, select_outputs
from edgemm.export.tracing import UserCode
from edgemm.models.spec import ExportSpec, ShapeCase


def _spec(*inputs: str, outputs=("logits",), **changes) -> ExportSpec:
    return ExportSpec(name="t", family="custom", task="regression",
                      inputs=[TensorSpec(n, "float32", ["batch", 4]) for n in inputs],
                      outputs=[TensorSpec(n, "float32", ["batch", 2]) for n in outputs],
                      axis_ranges={"batch": (1, 8)}, make_feed=lambda case, folder, rng: {}, **changes)


class Keywords(nn.Module):
    def forward(self, a, b, scale=1.0):
        return a + b


class Kwargs(nn.Module):
    def forward(self, **inputs):
        return inputs["a"]


class OneDict(nn.Module):
    def forward(self, batch):
        return batch["a"] - batch["b"]


class OneAnnotatedDict(nn.Module):
    def forward(self, batch: dict[str, torch.Tensor]):
        return batch["a"]


class Varargs(nn.Module):
    def forward(self, *tensors):
        return tensors[0] * tensors[1]


class Grouped(nn.Module):
    def forward(self, text, image):
        return text["ids"] + image


def _called(module, spec):
    plan = plan_forward(module, spec)
    a, b = torch.ones(1, 4), torch.full((1, 4), 2.0)
    return plan.describe(), plan.call(module, (a, b) if len(plan.inputs) == 2 else (a,))


def test_forward_is_called_the_way_its_signature_takes_the_inputs():
    assert _called(Keywords(), _spec("a", "b"))[0] == "forward(a, b)"
    assert _called(Kwargs(), _spec("a", "b"))[1].tolist() == [[1.0] * 4]
    described, out = _called(OneDict(), _spec("a", "b"))
    assert described == "forward(batch={a, b})" and out.tolist() == [[-1.0] * 4]
    assert _called(OneAnnotatedDict(), _spec("a"))[0] == "forward(batch={a})"
    assert _called(Varargs(), _spec("a", "b"))[1].tolist() == [[2.0] * 4]
    grouped = _spec("input_ids", "pixels", argument_names={"input_ids": "text.ids", "pixels": "image"})
    assert _called(Grouped(), grouped)[0] == "forward(text={ids: input_ids}, image=pixels)"


def test_a_signature_that_does_not_fit_is_named_with_the_mapping_to_add():
    with pytest.raises(SpecContractError) as caught:
        plan_forward(Keywords(), _spec("x", "y"))
    assert "takes `a`, `b`, `scale`" in caught.value.message and "`x`, `y` match no parameter" in caught.value.message
    assert "argument_names={'x': 'a', 'y': 'b'}" in caught.value.hint
    with pytest.raises(SpecContractError, match="argument_names names `c`"):
        plan_forward(Keywords(), _spec("a", "b", argument_names={"b": "c"}))


@dataclass
class Pair:
    logits: torch.Tensor
    extra: torch.Tensor | None = None


def test_outputs_are_read_from_tensors_tuples_dicts_model_outputs_dataclasses_and_named_tuples():
    t, u = torch.zeros(1, 2), torch.ones(1, 2)
    assert select_outputs(t, ("logits",))[0] is t
    assert select_outputs((t, u), ("logits", "extra"))[1] is u
    assert select_outputs({"extra": u, "logits": t}, ("logits",))[0] is t
    assert select_outputs(transformers.modeling_outputs.SequenceClassifierOutput(logits=t), ("logits",))[0] is t
    assert select_outputs(Pair(t, u), ("extra", "logits")) == (u, t)
    named = namedtuple("Named", ["extra", "logits"])(u, t)
    assert select_outputs(named, ("logits",))[0] is t
    with pytest.raises(SpecContractError, match="did you mean `logits` for `logit`"):
        select_outputs({"logits": t}, ("logit",))
    with pytest.raises(SpecContractError, match="returns a tuple of 2 values"):
        select_outputs((t, u), ("logits",))
    with pytest.raises(SpecContractError, match="`extra`, which forward"):
        select_outputs(Pair(t), ("logits", "extra"))  # a None field is not returned
    with pytest.raises(SpecContractError, match="'logits' is a float"):
        select_outputs({"logits": 1.0}, ("logits",))


def test_user_code_is_told_from_library_code():
    user = UserCode(Keywords())
    assert user.is_user(__file__)
    assert not user.is_user(torch.nn.functional.__file__)
    assert not user.is_user(transformers.models.bert.modeling_bert.__file__)
    assert not user.is_user(UserCode.__init__.__code__.co_filename)  # edgemm's own
    assert not user.is_user("<string>")


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"task": "classify"}, "unknown task 'classify'"),
    ({"inputs": [("a", "float32", [1])]}, "not a TensorSpec"),
    ({"inputs": [TensorSpec("a", "float32", ["batch", 0])]}, "has shape"),
    ({"axis_ranges": {"batch": (4, 2)}}, "1 ≤ min ≤ max"),
    ({"axis_ranges": {}}, "no range for dynamic axes ['batch']"),
    ({"postprocessing": {"type": "argmax"}}, "unknown postprocessing type 'argmax'"),
    ({"postprocessing": {"type": "sigmoid", "threshold": 2}}, "threshold 2"),
    ({"labels": ["a", "a"]}, "labels are not unique"),
    ({"modalities": {"text": {"inputs": ["ids"]}}}, "names inputs ['ids']"),
    ({"argument_names": {"a": "x.y.z."}}, "not 'parameter' or 'parameter.key'"),
    ({"opset": 13}, "opset 13"),
    ({"parity_cases": [ShapeCase("p", {"batch": 2})] * 3, "export_case": ShapeCase("export", {"batch": 2})},
     "at least 3 parity shapes"),
])
def test_a_malformed_export_spec_is_a_usage_error(changes, phrase):
    base = {"name": "t", "family": "custom", "task": "regression", "inputs": [TensorSpec("a", "float32", ["batch", 4])],
            "outputs": [TensorSpec("y", "float32", ["batch", 2])], "axis_ranges": {"batch": (1, 8)},
            "make_feed": lambda case, folder, rng: {}}
    with pytest.raises(UsageError) as caught:
        ExportSpec(**{**base, **changes})
    assert caught.value.exit_code == 2 and phrase in caught.value.message


def test_shape_cases_and_modalities_default_from_the_ranges_and_preprocessing():
    spec = ExportSpec(name="t", family="custom", task="regression",
                      inputs=[TensorSpec("input_values", "float32", ["batch", "audio_len"])],
                      outputs=[TensorSpec("y", "float32", ["batch", 1])],
                      axis_ranges={"batch": (1, 16), "audio_len": (1600, 32000)},
                      preprocessing={"audio": {"input": "input_values", "mask_input": None}})
    assert spec.export_case.sizes == {"batch": 2, "audio_len": 16800}
    assert [c.name for c in spec.parity_cases] == ["export", "smallest", "largest", "mixed"]
    assert spec.parity_cases[2].sizes == {"batch": 4, "audio_len": 32000}
    assert spec.modalities == {"audio": {"required": True, "inputs": ["input_values"], "presence_input": None}}
