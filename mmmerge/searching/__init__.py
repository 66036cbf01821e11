"""`mmmerge search`: merge coefficients chosen by optuna, each candidate scored with vision-language questions.

    from mmmerge import search
    result = search("search.yml", "search-out/")      # best_recipe.yml, trials.csv, plots, result.json
    result.best_params, result.test_scores

A spec is a recipe in which some values are ranges or choices (space.py) plus a `search:` section (spec.py).
Candidates are merged in memory into one model (candidate.py) and scored on the dev split by the objective the
spec names (objectives.py; samplers.py holds the samplers, each found by name); the study lives in optuna's
storage, so it resumes and takes trials from several processes (study.py). The driver (driver.py) runs it: the
best candidate is written as a plain recipe; its test score is computed once, after the search.
"""

from .driver import SearchResult, search
from .spec import load_spec

__all__ = ["search", "SearchResult", "load_spec"]
