"""The method registry: a name -> its detector class, config class and training recipe.

Entries are written as ``"module:attribute"`` strings and imported on first use, so listing the
methods and reading their settings (``anomaly-clip --help``) imports no torch. The built-in
methods register in :mod:`anomaly_clip.methods`; a plug-in calls :func:`register_method` with
classes or strings. The registry holds no command-line objects: the command line derives its
flags from :attr:`Method.config_class` and :attr:`Method.training_config_class`.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Dict, List, Optional, Type, Union

Target = Union[str, Any]


def resolve(target: Target) -> Any:
    """The object named ``"package.module:attribute"``, or ``target`` itself when it is one."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``detector``: the :class:`~anomaly_clip.engine.detector.AnomalyDetector` subclass;
    ``config``: its :class:`~anomaly_clip.engine.config.MethodConfig` dataclass;
    ``training``: the recipe ``(detector, data, TrainConfig) -> TrainResult`` run by
    :func:`anomaly_clip.fit` (None: a training-free method, usable with its defaults and no
    checkpoint); ``training_config``: the dataclass
    of its optimisation settings (``TrainConfig.method``); ``final_stage``: the training stage
    whose checkpoints hold the finished model (``""`` for single-stage methods).
    """

    name: str
    detector: Target
    config: Target
    training: Optional[Target] = None
    training_config: Optional[Target] = None
    description: str = ""
    final_stage: str = ""
    exportable: bool = False

    @property
    def detector_class(self) -> Type[Any]:
        return resolve(self.detector)

    def names(self, cls: type) -> bool:
        """Whether ``cls`` is this method's detector class (compared by name: nothing is imported)."""
        if isinstance(self.detector, str):
            return self.detector == f"{cls.__module__}:{cls.__qualname__}"
        return self.detector is cls

    @property
    def config_class(self) -> Type[Any]:
        return resolve(self.config)

    @property
    def training_config_class(self) -> Optional[Type[Any]]:
        return resolve(self.training_config) if self.training_config is not None else None

    @property
    def training_free(self) -> bool:
        """Whether the method has no learnt parts (no training recipe): it evaluates with its
        defaults, without a checkpoint."""
        return self.training is None

    @property
    def recipe(self) -> Callable[..., Any]:
        if self.training is None:
            raise TypeError(f"{self.name} is training-free: it has no training recipe")
        return resolve(self.training)


METHODS: Dict[str, Method] = {}
BUILTIN_METHODS = "anomaly_clip.methods"  # the package that registers the built-in methods when imported


def _register_builtins() -> None:
    """Import the package of the built-in methods (it registers them) before the first lookup."""
    import_module(BUILTIN_METHODS)


def registered_methods() -> List[Method]:
    """Every registered method (the built-in ones first)."""
    _register_builtins()
    return list(METHODS.values())


def register_method(name: str, detector: Target, config: Target, training: Optional[Target] = None,
                    training_config: Optional[Target] = None, description: str = "",
                    final_stage: str = "", exportable: bool = False) -> Method:
    """Add a method under ``name`` (see :class:`Method`); a name can be registered once."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = Method(name, detector, config, training, training_config, description, final_stage, exportable)
    return METHODS[name]


def canonical_method_name(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def find_method(name: str) -> Method:
    """The registered method called ``name`` (case, '-' and '_' ignored)."""
    _register_builtins()
    key = canonical_method_name(name)
    for registered, method in METHODS.items():
        if canonical_method_name(registered) == key:
            return method
    raise KeyError(f"unknown method {name!r}; available: {sorted(METHODS)}")


def method_of(cls: type) -> str:
    """The registered name of detector class ``cls`` (of its closest registered base class),
    ``""`` when none is registered."""
    _register_builtins()
    for base in cls.__mro__:
        for method in METHODS.values():
            if method.names(base):
                return method.name
    return ""


def method_names() -> List[str]:
    """Registered method names, in registration order."""
    _register_builtins()
    return list(METHODS)
