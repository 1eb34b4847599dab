"""BFCL's own AST checker, loaded from the bfcl-eval wheel with the standard library only (tests only).

The wheel is never installed (it pins numpy 1.26.4 and pulls ~30 SDKs), and
``bfcl_eval.constants.model_config`` imports every model handler. The checker needs five pure-Python
modules, which are read from the zip and executed into fresh module objects; ``model_config`` is a stub
whose MODEL_CONFIG_MAPPING answers ``underscore_to_dot`` (the only field the checker reads) as the
wheel's model_config.py says (parsed with ``ast``, never imported), False for any other model name.
``sys.modules`` is restored afterwards: nothing named ``bfcl_eval*`` stays registered.
"""

from __future__ import annotations

import ast
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

_PACKAGES = ("bfcl_eval", "bfcl_eval.constants", "bfcl_eval.eval_checker", "bfcl_eval.eval_checker.ast_eval",
             "bfcl_eval.eval_checker.ast_eval.type_convertor")
_MODULES = (  # in dependency order
    "bfcl_eval.constants.enums",
    "bfcl_eval.constants.type_mappings",
    "bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter",
    "bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter",
    "bfcl_eval.eval_checker.ast_eval.ast_checker",
)
_STUBBED = "bfcl_eval.constants.model_config"


def underscore_to_dot_models(source: str) -> dict[str, bool]:
    """{model key: underscore_to_dot} for every ``"key": ModelConfig(...)`` in model_config.py."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if (isinstance(key, ast.Constant) and isinstance(value, ast.Call)
                        and getattr(value.func, "id", None) == "ModelConfig"):
                    out[key.value] = any(kw.arg == "underscore_to_dot" and isinstance(kw.value, ast.Constant)
                                         and bool(kw.value.value) for kw in value.keywords)
    return out


@dataclass(frozen=True)
class _ModelConfig:
    underscore_to_dot: bool = False


class _ModelConfigMapping(dict):
    def __missing__(self, key):
        return _ModelConfig(False)


@dataclass
class Reference:
    ast_checker_module: types.ModuleType
    enums: types.ModuleType
    model_flags: dict

    def language(self, category: str):
        lang = self.enums.Language
        if "javascript" in category:
            return lang.JAVASCRIPT
        return lang.JAVA if "java" in category else lang.PYTHON

    def check(self, category: str, functions: list, ground_truth: list, output,
              model_name: str = "snaketune") -> dict:
        """BFCL's verdict for a decoded output, as eval_runner gets it (its shape test first)."""
        if not (isinstance(output, list) and all(type(c) is dict and len(c) == 1
                                                 and type(next(iter(c.values()))) is dict for c in output)):
            return {"valid": False, "error_type": "ast_decoder:decoder_wrong_output_format"}
        return self.ast_checker_module.ast_checker(functions, output, ground_truth, self.language(category),
                                                   category, model_name)


def load_reference(wheel) -> Reference:
    with zipfile.ZipFile(wheel) as zf:
        sources = {name: zf.read(name.replace(".", "/") + ".py").decode("utf-8") for name in _MODULES}
        flags = underscore_to_dot_models(zf.read("bfcl_eval/constants/model_config.py").decode("utf-8"))
    saved = {k: v for k, v in sys.modules.items() if k == "bfcl_eval" or k.startswith("bfcl_eval.")}
    for key in saved:
        del sys.modules[key]
    loaded = {}
    try:
        for name in _PACKAGES:
            pkg = types.ModuleType(name)
            pkg.__path__ = []  # nothing on disk: only what is registered here can be imported
            sys.modules[name] = pkg
        stub = types.ModuleType(_STUBBED)
        stub.MODEL_CONFIG_MAPPING = _ModelConfigMapping({k: _ModelConfig(v) for k, v in flags.items()})
        stub.ModelConfig = _ModelConfig
        sys.modules[_STUBBED] = stub
        for name in _MODULES:
            mod = types.ModuleType(name)
            mod.__file__ = f"{wheel}/{name.replace('.', '/')}.py"
            mod.__package__ = name.rpartition(".")[0]
            sys.modules[name] = mod
            # BFCL's own code, from the wheel whose sha256 the bfcl_wheel fixture checked
            exec(compile(sources[name], mod.__file__, "exec"), mod.__dict__)  # noqa: S102
            loaded[name] = mod
    finally:
        for key in [k for k in sys.modules if k == "bfcl_eval" or k.startswith("bfcl_eval.")]:
            del sys.modules[key]
        sys.modules.update(saved)
    return Reference(loaded["bfcl_eval.eval_checker.ast_eval.ast_checker"],
                     loaded["bfcl_eval.constants.enums"], flags)


if __name__ == "__main__":
    print(sum(load_reference(Path(sys.argv[1])).model_flags.values()), "models with underscore_to_dot")
