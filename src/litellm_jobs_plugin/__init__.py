"""Job tracking and per-job credits for the LiteLLM proxy, loaded by the proxy itself.

``litellm_settings: callbacks: ["litellm_jobs_plugin.plugin"]`` makes LiteLLM import this package
and take its :data:`plugin` attribute, the one :class:`~litellm_jobs_plugin.hooks.JobsPlugin` of
the process. The attribute is resolved lazily so that importing the package (the client, the CLI)
does not import LiteLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "plugin"]

if TYPE_CHECKING:
    from .hooks import JobsPlugin

    plugin: JobsPlugin


def __getattr__(name: str) -> Any:
    if name == "plugin":
        from .hooks import plugin

        return plugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
