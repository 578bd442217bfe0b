"""A griffe extension for the API reference: the docstrings' Sphinx roles become links.

``:meth:`aclose``` (or ``:class:``, ``:func:``, a ``~`` prefix) resolves in the scope of the
object it is written in. When the target is part of the public API, it becomes a cross
reference to the public path (``ssebus.Broadcaster.aclose``); otherwise, e.g. a private
helper, it becomes plain code, so ``mkdocs build --strict`` never sees a dangling link.

The first paragraph is also joined into one line: the reference's summary tables show a
docstring's first line, which would otherwise stop mid-sentence where the source wraps.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:meth|func|class|attr|mod|exc|data|obj):`(~?)([\w.]+)`")
PUBLIC_MODULES = (
    "ssebus",
    "ssebus.redis",
    "ssebus.testing",
    "ssebus.prometheus",
    "ssebus.otel",
    "ssebus.starlette",
    "ssebus.fastapi",
    "ssebus.litestar",
    "ssebus.quart",
    "ssebus.django",
)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "ssebus":
            return
        public = _public_paths(loader)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                link = partial(_link, obj=obj, loader=loader, public=public)
                obj.docstring.value = _join_first_paragraph(ROLE.sub(link, obj.docstring.value))


def _public_paths(loader: griffe.GriffeLoader) -> dict[str, str]:
    """Canonical path -> public path, for every name in the public modules' ``__all__``
    and the public members of those names."""
    paths: dict[str, str] = {}
    for module_path in PUBLIC_MODULES:
        module = loader.modules_collection[module_path]
        for name in module.exports or ():
            target = module[name]
            public = f"{module_path}.{name}"
            paths.setdefault(target.canonical_path, public)
            if target.is_class:
                for member in target.all_members.values():
                    if not member.name.startswith("_"):
                        paths.setdefault(member.canonical_path, f"{public}.{member.name}")
    return paths


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _join_first_paragraph(text: str) -> str:
    first, blank, rest = text.partition("\n\n")
    lines = first.split("\n")
    if any(line[:1].isspace() or line.lstrip()[:2] in ("- ", "* ") for line in lines[1:]):
        return text  # a list or an indented block: leave it as written
    return " ".join(line.strip() for line in lines) + blank + rest


def _link(
    match: re.Match[str], *, obj: griffe.Object, loader: griffe.GriffeLoader, public: dict[str, str]
) -> str:
    short, name = match.group(1), match.group(2)
    shown = name.rsplit(".", 1)[-1] if short else name
    canonical = _resolve(name, obj, loader)
    if canonical in public:
        return f"[`{shown}`][{public[canonical]}]"
    return f"`{shown}`"


def _resolve(name: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
    """The canonical path ``name`` means where ``obj``'s docstring is written, if any."""
    head = name.split(".", 1)[0]
    scope: griffe.Object | None = obj
    candidates = [name]
    while scope is not None:
        if head in scope.members:
            candidates.insert(0, f"{scope.path}.{name}")
            break
        scope = scope.parent
    for path in candidates:
        try:
            return loader.modules_collection[path].canonical_path  # type: ignore[no-any-return]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return None
