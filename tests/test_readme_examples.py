"""The README's ten-line example, and its FastAPI and Starlette versions, run as written:
each streams a published event, and each passes ``mypy --strict`` as a user's module."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ssebus.testing import SseTestClient

ROOT = Path(__file__).resolve().parent.parent


def readme_examples() -> dict[str, str]:
    """The ten-line example (``asgi``) and, for each framework, the example with its
    ``app = ...`` line replaced by that framework's snippet."""
    section = (ROOT / "README.md").read_text().split("## In ten lines", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3, blocks
    example, fastapi, starlette = blocks
    app_line = next(line for line in example.splitlines() if line.startswith("app = "))
    return {
        "asgi": example,
        "fastapi": example.replace(app_line, fastapi),
        "starlette": example.replace(app_line, starlette),
    }


EXAMPLES = readme_examples()


def load(name: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the example as the module file a user would save it as."""
    path = directory / f"readme_{name}.py"
    path.write_text(EXAMPLES[name])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_the_readme_example_streams_what_its_domain_code_publishes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load(name, tmp_path, monkeypatch)
    async with SseTestClient(module.app) as client:
        async with client.stream("/events") as stream:
            await module.create_order("ord-1")
            event = await stream.next(within=5)
    assert (event.type, event.data) == ("order-created", '{"orderId":"ord-1","status":"created"}')


def test_the_readme_examples_pass_mypy_strict_as_user_modules(tmp_path: Path) -> None:
    for name, code in EXAMPLES.items():
        (tmp_path / f"readme_{name}.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
