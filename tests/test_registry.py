"""Registering operators: a name taken by another class is an error naming both files; re-imports are fine."""

import sys
import textwrap

import pytest

from dataflow.core.registry import OPERATOR_REGISTRY, OperatorImportError, Registry

OPERATOR_FILE = textwrap.dedent('''
    from dataflow.core import OperatorABC
    from dataflow.utils.registry import OPERATOR_REGISTRY

    @OPERATOR_REGISTRY.register()
    class SameNameFilter(OperatorABC):
        """{doc}"""
        def run(self, storage):
            storage.write(storage.read())
''')


@pytest.fixture
def global_registry():
    """The global registry, with whatever a test registers forgotten afterwards."""
    OPERATOR_REGISTRY.load_builtins()
    saved_map, saved_paths = dict(OPERATOR_REGISTRY._obj_map), set(OPERATOR_REGISTRY._loaded_paths)
    saved_modules = set(sys.modules)
    try:
        yield OPERATOR_REGISTRY
    finally:
        for name in set(sys.modules) - saved_modules:
            if name.startswith("dataflow_user_operators."):
                del sys.modules[name]
        OPERATOR_REGISTRY._obj_map.clear()
        OPERATOR_REGISTRY._obj_map.update(saved_map)
        OPERATOR_REGISTRY._loaded_paths.clear()
        OPERATOR_REGISTRY._loaded_paths.update(saved_paths)


def write_operator(folder, file_name, doc):
    folder.mkdir()
    path = folder / file_name
    path.write_text(OPERATOR_FILE.format(doc=doc))
    return path


def test_two_files_registering_one_name_is_an_error_naming_both(tmp_path, global_registry):
    first = write_operator(tmp_path / "a", "first_op.py", "The first one.")
    second = write_operator(tmp_path / "b", "second_op.py", "Another class, same name.")
    global_registry.load_user_operators([first.parent])
    assert global_registry.get("SameNameFilter").__doc__ == "The first one."
    with pytest.raises(OperatorImportError) as info:
        global_registry.load_user_operators([second.parent])
    assert isinstance(info.value.__cause__, KeyError)
    message = info.value.__cause__.args[0]
    assert message == (
        f"an operator named 'SameNameFilter' is already registered from {first}; {second} registers "
        "another class under that name"
    )
    assert global_registry.get("SameNameFilter").__doc__ == "The first one."  # the first one stays


def test_registering_the_same_class_again_replaces_it():
    registry = Registry("t")

    class Op:
        pass

    registry.register(Op)
    registry.register(Op)
    assert registry._obj_map == {"Op": Op}


def test_a_reimported_module_registers_again_silently(tmp_path):
    import importlib.util

    path = tmp_path / "reimported.py"
    path.write_text("class Op:\n    pass\n")
    registry = Registry("t")
    classes = []
    for _ in range(2):  # two module objects from one file: two class objects, one class
        spec = importlib.util.spec_from_file_location("reimported_for_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        classes.append(registry.register(module.Op))
    assert classes[0] is not classes[1]
    assert registry._obj_map["Op"] is classes[1]


def test_another_class_under_the_same_name_in_one_registry():
    registry = Registry("t")

    class Op:
        pass

    def make():
        class Op:
            pass

        return Op

    registry.register(Op)
    with pytest.raises(KeyError, match=r"already registered from .*test_registry\.py; .*test_registry\.py registers"):
        registry.register(make())
    registry.register(make(), name="OtherName")  # an explicit name avoids the clash
    assert registry._obj_map["Op"] is Op
