"""Where the real-server tests find the ComfyUI harness when $MAGIHUMAN_HARNESS is not set (tests/comfyui_harness.py):
beside a clean checkout (CI) and beside the parent folder of a git worktree kept in a subfolder."""

from tests.comfyui_harness import HARNESS_REL, default_harness


def _tree(tmp_path, *checkouts):
    harness = tmp_path / HARNESS_REL
    harness.parent.mkdir(parents=True)
    harness.write_text("")
    for c in checkouts:
        (tmp_path / c).mkdir(parents=True)
    return harness


def test_harness_beside_a_clean_checkout(tmp_path):
    harness = _tree(tmp_path, "main")
    assert default_harness(tmp_path / "main") == harness


def test_harness_beside_the_parent_of_a_worktree(tmp_path):
    harness = _tree(tmp_path, "wt/lvtemplates")
    assert default_harness(tmp_path / "wt" / "lvtemplates") == harness


def test_no_harness_names_the_place_ci_puts_it(tmp_path):
    (tmp_path / "wt" / "x").mkdir(parents=True)
    assert default_harness(tmp_path / "wt" / "x") == tmp_path / "wt" / HARNESS_REL
