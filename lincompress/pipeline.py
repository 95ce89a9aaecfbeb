"""The pass pipeline: typed State, passes that declare what they need, recorded model changes.

``State`` carries everything passes hand to each other, as typed fields. A pass is any
object with a ``name`` and ``run(state) -> state``; it may also declare

* ``requires`` / ``produces``: *facts* (``"sites"``, ``"hybrid"``, ``"selection"``, ...)
  it needs before it and makes; ``"a|b"`` in ``requires`` means either. ``Pipeline``
  checks the whole order before running anything and names the pass that is missing;
* ``before``: facts that must not exist yet when it runs (``passes.Distill`` declares
  ``("fixed",)``: it trains the hybrid, so it comes before ``passes.Fix``);
* ``check(state)``: a cheap preflight (an output directory, a scheduler) run for every
  pass before the first one starts, so a long run does not fail at its end;
* ``planned_outputs``: the outputs it will write, known before it runs (``passes.Save``:
  ``{"artifact": out_dir}``). The preflight of every later pass sees them in
  ``state.outputs``, so ``passes.Report()`` checks the artifact directory a ``Save`` before
  it will write, before any pass runs.

A pass that changes the model is a ``RecordedPass``: a validated config
(``lincompress.config.PassConfig``), ``convert(model, config, state) -> (model, metadata)``
and ``restore(model, config, metadata) -> model``, after ModelOpt's ``ModeDescriptor``.
Running it appends a ``RecipeStep(name, config, metadata)`` to ``state.recipe``; an
artifact stores that recipe and ``lincompress.apply`` replays it through each pass's
``restore`` (``lincompress.artifacts.replay``), so a third-party pass registered under the
entry-point group ``lincompress.passes`` is part of a saved model like a built-in one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from torch import nn

from lincompress.config import PassConfig
from lincompress.errors import LinCompressError
from lincompress.target import Target

if TYPE_CHECKING:
    from lincompress.discovery import SiteInfo
    from lincompress.recovery_config import SelectiveConfig

# fact -> (what it is, which pass makes it): the vocabulary of requires/produces
FACTS: dict[str, tuple[str, str]] = {
    "sites": ("discovered attention sites", "passes.FindAttention()"),
    "hybrid": ("a hybridized model", "passes.Hybridize()"),
    "selection": ("a selection of linear sites",
                  "passes.HeuristicSelect(...) or passes.GreedySelect(...), or passes.SelectiveTransfer(...) "
                  "followed by passes.Recover(steps > 0)"),
    "selective": ("a learned-selection setup", "passes.SelectiveTransfer(...)"),
    "fixed": ("a fixed model", "passes.Fix()"),
    "artifact": ("a saved artifact", "passes.Save(out_dir)"),
}
_TYPED_FACTS = frozenset(FACTS)  # read off State's typed fields; other facts are tracked in State.provided


def declare_fact(name: str, description: str, made_by: str) -> None:
    """Let a third-party pass name what its fact is and which pass makes it (for Pipeline errors)."""
    FACTS.setdefault(name, (description, made_by))


class PipelineError(LinCompressError):
    """Passes in an order that cannot work."""


@dataclass
class RecipeStep:
    """One recorded model change: which pass, its config, what its restore needs."""

    name: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    package: str = "lincompress"  # the distribution that provides the pass (for "not installed" errors)

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "package": self.package, "config": self.config, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeStep:
        return cls(data["pass"], dict(data.get("config") or {}), dict(data.get("metadata") or {}),
                   data.get("package") or "lincompress")


@dataclass
class State:
    """What passes hand to each other. Each field says which pass sets it."""

    target: Target
    model: nn.Module
    sites: list[SiteInfo] = field(default_factory=list)  # FindAttention: every attention site, in call order
    trace_method: str | None = None  # FindAttention: "fx" | "export" | ...
    base_hash: str | None = None  # FindAttention: fingerprint of the original model
    feature_map: str | None = None  # Hybridize
    target_linear: float | None = None  # selection passes
    selection_method: str | None = None  # "first" | "last" | "uniform" | "sites" | "greedy" | "selective_transfer"
    selection: list[str] | None = None  # names of the sites that become linear (selection passes, Recover)
    selective: SelectiveConfig | None = None  # SelectiveTransfer: learn the selection in the next Recover
    fixed: bool = False  # Fix
    recipe: list[RecipeStep] = field(default_factory=list)  # every recorded model change, in order
    metrics: dict[str, Any] = field(default_factory=dict)
    modified_parameters: set[str] = field(default_factory=set)  # base parameters changed by training
    outputs: dict[str, Path] = field(default_factory=dict)  # files written by passes/exporters
    history: list[dict[str, Any]] = field(default_factory=list)  # {"pass", "seconds"} per pass run
    provided: set[str] = field(default_factory=set)  # facts made by passes that have no typed field
    scratch: list[Path] = field(default_factory=list)  # temporary work dirs (lincompress.scratch): gone after success

    @classmethod
    def for_hybrid(cls, target: Target, model: nn.Module) -> State:
        """A State for a model that already carries hybrid sites (made elsewhere, e.g. by the ModelOpt mode)."""
        from lincompress.attention import iter_sites

        sites = iter_sites(model)
        if not sites:
            raise LinCompressError(
                "the model carries no lincompress sites; hybridize it first (passes.Hybridize(), or the ModelOpt "
                "mode linear_attention with select=None)"
            )
        return cls(target=target, model=model, feature_map=sites[0][1].feature_map_name)

    @property
    def candidates(self) -> list[SiteInfo]:
        return [s for s in self.sites if s.candidate]

    def candidate_names(self) -> list[str]:
        """Candidate site names in call order: from discovery, or from the model's own sites."""
        if self.sites:
            return [s.name for s in self.candidates]
        from lincompress.attention import iter_sites

        return [name for name, _ in iter_sites(self.model)]

    @property
    def facts(self) -> set[str]:
        """What the passes so far have made (checked against ``requires``)."""
        made = set(self.provided)
        for fact, present in (("sites", bool(self.sites)), ("hybrid", self.feature_map is not None),
                              ("selection", self.selection is not None), ("selective", self.selective is not None),
                              ("fixed", self.fixed), ("artifact", "artifact" in self.outputs)):
            if present:
                made.add(fact)
        return made


@runtime_checkable
class Pass(Protocol):
    name: str

    def run(self, state: State) -> State: ...


class BasePass:
    """A built-in style pass: a validated ``config`` built from the constructor's arguments.

    ``Pass(**fields)`` (or positional, in field order) builds ``config_class``; ``Pass(config)`` /
    ``Pass(config=...)`` takes a ready one. Config fields read as attributes of the pass (``Hybridize().feature_map``).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PassConfig]]
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    before: tuple[str, ...] = ()

    def __init__(self, *args: Any, config: PassConfig | None = None, **kwargs: Any) -> None:
        if config is None and len(args) == 1 and isinstance(args[0], PassConfig):
            config, args = args[0], ()
        if config is not None:
            if args or kwargs:
                raise LinCompressError(f"{type(self).__name__}: give either config= or its fields, not both")
            if not isinstance(config, self.config_class):
                raise LinCompressError(
                    f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
            self.config = config
        else:
            self.config = self.config_class.build(args, kwargs, type(self).__name__)

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")
        if config is None or name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(config, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}") from None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self.config).items())
        return f"{type(self).__name__}({fields})"

    def check(self, state: State) -> None:
        """Preflight before the pipeline runs anything (default: nothing)."""

    def run(self, state: State) -> State:
        raise NotImplementedError


class RecordedPass(BasePass):
    """A pass that changes the model: ``convert`` records ``(name, config, metadata)``, ``restore`` replays it.

    ``convert`` works on ``model`` in place (or returns a new one, as Hybridize's copy does),
    may read and set State fields, and returns JSON-ready ``metadata``: what ``restore``
    needs, beyond the config, to rebuild the same structure on a fresh original model.
    ``restore`` must only rebuild structure (modules, modes); weights are loaded afterwards.
    """

    def convert(self, model: nn.Module, config: PassConfig, state: State) -> tuple[nn.Module, dict[str, Any]]:
        raise NotImplementedError

    @staticmethod
    def restore(model: nn.Module, config: PassConfig, metadata: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def run(self, state: State) -> State:
        from lincompress import scratch
        from lincompress.registry import package_of

        with scratch.pass_scope(state):  # run by hand: its temporary work directories are its own to clean up
            model, metadata = self.convert(state.model, self.config, state)
        state.model = model
        state.recipe.append(RecipeStep(self.name, self.config.to_dict(), metadata, package_of(type(self))))
        return state


def _requires(p: Any) -> tuple[str, ...]:
    return tuple(getattr(p, "requires", ()) or ())


def _produces(p: Any) -> tuple[str, ...]:
    return tuple(getattr(p, "produces", ()) or ())


def _before(p: Any) -> tuple[str, ...]:
    return tuple(getattr(p, "before", ()) or ())


def _planned_outputs(p: Any) -> dict[str, Path]:
    return dict(getattr(p, "planned_outputs", None) or {})


def _describe(options: list[str]) -> tuple[str, str]:
    what = [FACTS.get(o, (f"'{o}'", ""))[0] for o in options]
    made = [FACTS.get(o, ("", f"a pass that produces '{o}'"))[1] for o in options]
    made = [m for m in made if not any(m != other and m in other for other in made)]  # no maker named twice
    return " or ".join(what), " or ".join(dict.fromkeys(made))


def _run_pass(p: Any, state: State) -> State:
    """``p.run(state)``; a pass that writes shared files (``main_process_only``) runs on rank 0 of a process group."""
    if getattr(p, "main_process_only", False):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from lincompress.distributed.passes import run_on_main

            return run_on_main(p, state)
    return p.run(state)


class Pipeline:
    """Checks the order of its passes, runs them, and records what each took; ``run(target)`` returns the State."""

    def __init__(self, passes: list[Pass]) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a pass: it needs a `name` and a `run(state) -> state` method")
        self.passes = list(passes)

    def check(self, state: State) -> None:
        """Every pass's ``requires`` is met by the state or an earlier pass; then each pass's preflight."""
        have = state.facts
        for i, p in enumerate(self.passes):
            for fact in _before(p):
                if fact in have:
                    _, made_by = _describe([fact])
                    raise PipelineError(f"{p.name} (pass {i + 1} of {len(self.passes)}) must run before {made_by} "
                                        f"(it needs a model that is not '{fact}' yet); move it earlier")
            for need in _requires(p):
                options = need.split("|")
                if not have & set(options):
                    what, made_by = _describe(options)
                    raise PipelineError(
                        f"{p.name} (pass {i + 1} of {len(self.passes)}) needs {what}; put {made_by} before it")
            have |= set(_produces(p))
        planned = dict(state.outputs)  # what the passes before each one will have written
        for p in self.passes:
            preflight = getattr(p, "check", None)
            if callable(preflight):
                preflight(dataclasses.replace(state, outputs=dict(planned)))
            planned.update(_planned_outputs(p))

    def run(self, target: Target | State) -> State:
        """Check, then run every pass; temporary work directories go after success and stay after a failure."""
        from lincompress import scratch

        state = target if isinstance(target, State) else State(target=target, model=target.model)
        self.check(state)
        try:
            for p in self.passes:
                start = time.perf_counter()
                with scratch.owned_by_pipeline():
                    done = _run_pass(p, state)
                if not isinstance(done, State):
                    raise TypeError(f"pass {p.name!r} returned {type(done).__name__}, not a lincompress State")
                state = done
                state.provided |= set(_produces(p)) - _TYPED_FACTS
                state.history.append({"pass": p.name, "seconds": round(time.perf_counter() - start, 3)})
        except BaseException as exc:
            scratch.keep(state, exc)
            raise
        scratch.remove(state)
        return state
