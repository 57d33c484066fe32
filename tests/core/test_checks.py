"""Argument checks: renamed keywords are refused naming their new name (workbench.core.checks)."""

import pytest

from workbench.core.checks import check_keys, check_kwargs, renamed_keywords


@renamed_keywords(kind="fisher_type")
def _fisher(x, *, fisher_type="true"):
    return x, fisher_type


def test_renamed_keyword_is_refused_naming_the_new_one():
    assert _fisher(1, fisher_type="empirical") == (1, "empirical")
    with pytest.raises(TypeError, match=r"_fisher\(\) got an unexpected keyword argument "
                                        r"'kind' \('kind' is now 'fisher_type'\)"):
        _fisher(1, kind="empirical")
    assert _fisher.__renamed_keywords__ == {"kind": "fisher_type"}


def test_unknown_keyword_and_key_messages_name_renamed_ones():
    with pytest.raises(TypeError, match=r"\['kind'\] \('kind' is now 'fisher_type'\); "
                                        r"accepted: \['fisher_type'\]"):
        check_kwargs("f", {"kind": 1}, ["fisher_type"], renamed={"kind": "fisher_type"})
    with pytest.raises(TypeError, match=r"\['nope'\]; accepted"):
        check_kwargs("f", {"nope": 1}, ["fisher_type"], renamed={"kind": "fisher_type"})
    with pytest.raises(ValueError, match=r"'importance_kind' is now 'score_kind'"):
        check_keys({"importance_kind": "x"}, ["score_kind"], "experiment 'A'",
                   renamed={"importance_kind": "score_kind"})
