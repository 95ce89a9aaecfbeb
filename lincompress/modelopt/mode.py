"""The ``linear_attention`` ModelOpt mode: a ``ModeDescriptor`` over lincompress's recorded passes.

Config (``LinearAttentionConfig``):

* ``target_linear`` (float): fraction of the self/joint attention sites made linear;
* ``select``: ``"uniform" | "first" | "last"`` (a heuristic picks them), a list of site
  names (exactly those), or ``None`` (keep a trainable hybrid: train it with
  ``lincompress.recover(model, target, ...)``, then apply the mode again with
  ``select=state.selection`` to fix it);
* ``feature_map``: ``"relu" | "elu1" | "hedgehog"``;
* ``example_inputs``: the keyword arguments of one ``model(**kwargs)`` call (a dict, or a
  function ``batch_size -> dict``). Discovery traces the model with them, the way
  ``mtq.quantize`` needs a ``forward_loop``; they are used by ``convert`` only and are
  never saved (``modelopt_state`` holds no tensors). Not needed when the model already
  carries hybrid sites (the second ``apply_mode``).

``convert`` runs ``passes.FindAttention``, ``passes.Hybridize`` and, when ``select`` is set,
``passes.HeuristicSelect`` + ``passes.Fix`` in place, and returns their recipe as the
metadata; ``restore`` replays that recipe through the passes' own ``restore`` functions
(``lincompress.artifacts.replay``), the same code ``lincompress.apply`` uses. The
defaults (target_linear, feature_map) are the passes' defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelopt.torch.opt.config import ModeloptBaseConfig, ModeloptField
from modelopt.torch.opt.mode import ConvertEntrypoint, ModeDescriptor, RestoreEntrypoint, _ModeRegistryCls
from pydantic import model_validator
from torch import nn

from lincompress.config import field_default
from lincompress.errors import LinCompressError
from lincompress.passes.hybridize import HybridizeConfig
from lincompress.passes.select import SelectConfig
from lincompress.pipeline import Pipeline, State
from lincompress.target import Target

MODE = "linear_attention"
LinearAttentionModeRegistry = _ModeRegistryCls(MODE)


class LinearAttentionConfig(ModeloptBaseConfig):
    """Config of the ``linear_attention`` mode; values are checked by the lincompress pass configs."""

    target_linear: float = ModeloptField(
        default=field_default(SelectConfig, "target_linear"), title="Target linear fraction",
        description="Fraction of the self/joint attention sites to make linear (with a heuristic select).")
    select: str | list[str] | None = ModeloptField(
        default="uniform", title="Selection",
        description='"uniform" | "first" | "last", a list of site names, or None to keep a trainable hybrid.')
    feature_map: str = ModeloptField(
        default=field_default(HybridizeConfig, "feature_map"), title="Feature map",
        description="Feature map of the linear attention branch: relu | elu1 | hedgehog.")
    example_inputs: Any = ModeloptField(
        default=None, exclude=True, title="Example inputs",
        description="model(**kwargs) arguments (dict or function batch_size -> dict) to trace the model; not saved.")

    @model_validator(mode="after")
    def _validate_with_the_passes(self) -> LinearAttentionConfig:
        HybridizeConfig(feature_map=self.feature_map)
        if isinstance(self.select, list):
            SelectConfig(target_linear=self.target_linear, sites=self.select)
        elif self.select is not None:
            if self.select in ("learned", "greedy"):
                raise LinCompressError(
                    f"select={self.select!r} needs training; convert with select=None, train with "
                    "lincompress.recover(model, target, ...), then apply the mode again with select=state.selection")
            SelectConfig(target_linear=self.target_linear, strategy=self.select)
        else:
            SelectConfig(target_linear=self.target_linear)
        ex = self.example_inputs
        if ex is not None and not isinstance(ex, dict) and not callable(ex):
            raise LinCompressError(f"example_inputs must be a dict of model(**kwargs) arguments or a function "
                                   f"batch_size -> dict, got {type(ex).__name__}")
        return self


def _example_inputs(value: dict[str, Any] | Callable[[int], dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
    return value if callable(value) else (lambda batch_size: dict(value))


def _no_inputs(batch_size: int) -> dict[str, Any]:
    raise LinCompressError("this step does not run the model")


def linear_sites(model: nn.Module) -> list[str]:
    """Names of the model's attention sites that run linear attention (``"<owner path>#<call index>"``)."""
    from lincompress.attention import iter_sites

    return [name for name, site in iter_sites(model) if site.mode == "linear"]


def convert_linear_attention(model: nn.Module, config: LinearAttentionConfig, **mode_kwargs: Any
                             ) -> tuple[nn.Module, dict[str, Any]]:
    """Hybridize (and, with ``select``, select + fix) ``model`` in place; metadata = the passes' recipe."""
    from lincompress import passes
    from lincompress.attention import iter_sites

    def select_pass() -> Any:
        if isinstance(config.select, list):
            return passes.HeuristicSelect(target_linear=config.target_linear, sites=config.select)
        return passes.HeuristicSelect(target_linear=config.target_linear, strategy=config.select)

    if iter_sites(model):  # a hybrid made by an earlier apply_mode (and trained): fix it
        if config.select is None:
            raise LinCompressError("the model already carries hybrid sites; give select (e.g. state.selection from "
                                   "lincompress.recover) to fix them")
        state = State.for_hybrid(Target(model=model, example_inputs=_no_inputs), model)
        steps = [select_pass(), passes.Fix()]
    else:
        if config.example_inputs is None:
            raise LinCompressError(
                "linear_attention traces the model to find its attention: put example_inputs (the model(**kwargs) "
                "arguments of one call, or a function batch_size -> dict) in the mode's config")
        target = Target(model=model, example_inputs=_example_inputs(config.example_inputs), name=type(model).__name__)
        state = State(target=target, model=model)
        steps = [passes.FindAttention(), passes.Hybridize(feature_map=config.feature_map, copy=False)]
        if config.select is not None:
            steps += [select_pass(), passes.Fix()]
    state = Pipeline(steps).run(state)
    return state.model, {"recipe": [step.to_dict() for step in state.recipe]}


def restore_linear_attention(model: nn.Module, config: LinearAttentionConfig, metadata: dict[str, Any]) -> nn.Module:
    """Rebuild the converted structure on a fresh model from the recorded recipe (weights come afterwards)."""
    from lincompress.artifacts import replay

    return replay(model, metadata["recipe"], where=f"ModelOpt mode {MODE}")


@LinearAttentionModeRegistry.register_mode
class LinearAttentionModeDescriptor(ModeDescriptor):
    """``linear_attention``: softmax -> linear attention at the selected self/joint attention sites."""

    @property
    def name(self) -> str:
        return MODE

    @property
    def config_class(self) -> type[ModeloptBaseConfig]:
        return LinearAttentionConfig

    @property
    def convert(self) -> ConvertEntrypoint:
        return convert_linear_attention

    @property
    def restore(self) -> RestoreEntrypoint:
        return restore_linear_attention
