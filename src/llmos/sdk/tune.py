"""The client's ``tune`` calls (``/v1/tune/studies``): start a tuning study from a recipe
(a dict, YAML text or a file), list, show, stop, resume and wait for studies.

    study = Client().tune.start("search.yaml")
    done = Client().tune.wait(study["name"])
    print(done["best"]["value"], done["best"]["params"], done["importances"])
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

if TYPE_CHECKING:
    from llmos.sdk.client import Client

ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


class RecipeFileError(ValueError):
    """A recipe file that cannot be read, or is not a YAML mapping."""


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A tuning recipe file's content. A program written as a relative ``file.py:function``
    is made absolute from the file's folder (the daemon does not run where the file is)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise RecipeFileError(f"{path} is a folder, not a recipe file") from None
    except (UnicodeDecodeError, OSError) as e:
        raise RecipeFileError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}"
                              ) from None
    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeFileError(f"{path} is not valid YAML: {problem}{where}") from None
    if not isinstance(recipe, dict):
        raise RecipeFileError(f"{path} must be a YAML mapping (name, space, objective, ...)")
    program = recipe.get("program")
    if isinstance(program, str) and ".py:" in program and not program.startswith("/"):
        file, _, func = program.rpartition(":")
        recipe["program"] = f"{(path.parent / file).resolve()}:{func}"
    return recipe


def _path(name: str) -> str:
    return f"/v1/tune/studies/{quote(name, safe='/')}"


class Tune:
    """``client.tune``: tuning studies."""

    def __init__(self, client: Client):
        self._c = client

    def start(self, recipe: dict | str | Path, team: str | None = None) -> dict:
        """Start a study; ``recipe`` is a dict, a recipe file's path, or YAML text."""
        if isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe
                                        and recipe.endswith((".yaml", ".yml", ".json"))):
            recipe = load_recipe(recipe)
        body: dict[str, Any] = {"recipe": recipe}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/tune/studies", json=body).json()

    def list(self, state: str | list[str] | None = None) -> list[dict]:
        params = {"state": [state] if isinstance(state, str) else list(state)} if state else {}
        return self._c.request("GET", "/v1/tune/studies", params=params).json()["studies"]

    def get(self, name: str, importances: bool = True) -> dict:
        """The study with its counts, best trial, every trial and (unless
        ``importances=False``) the parameters' importances."""
        return self._c.request("GET", _path(name),
                               params={"importances": str(importances).lower()}).json()

    def stop(self, name: str) -> dict:
        return self._c.request("POST", f"{_path(name)}/stop").json()

    def resume(self, name: str, trials: int | None = None) -> dict:
        body = {"trials": trials} if trials is not None else {}
        return self._c.request("POST", f"{_path(name)}/resume", json=body).json()

    def wait(self, name: str, timeout: float | None = None, interval: float = 1.0) -> dict:
        """Poll until the study has ended (succeeded, failed or stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            study = self.get(name, importances=False)
            if study["state"] in ENDED:
                return self.get(name)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"study {name} still {study['state']} after {timeout} s")
            time.sleep(interval)
