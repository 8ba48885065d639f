"""How many users and test pairs a group needs before a verdict is read from it.

One rule for a support group's verdict (:mod:`pafo.compare`), a slice's (:mod:`pafo.slices`) and the small-sample
warnings (:mod:`pafo.report`). Counts pool over seeds: the paired bootstrap resamples each seed's users on their own
and averages the seeds, so 10 seeds × 12 minority users carry about the evidence of 120 users (unseen users, held out
at 20% of 300, are such a group; judged seed by seed they were always "within noise"). A seed with a mere handful of
a group's users is still too few to resample: the bootstrap variance of a mean of n users is (n − 1)/n of the true
one (1–2 users give zero-width intervals), so each seed must also hold :data:`MIN_SEED_USERS` of them. At 5, that
seed's share of an interval is at most 11% too narrow. With one seed the rule is the plain per-group minimum.

No heavy imports here: the CLI reads these numbers at its start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MIN_PAIRS", "MIN_SEED_USERS", "MIN_USERS", "REASON_TOO_FEW", "GroupCounts", "shortfall"]

#: A group's users and test pairs over all seeds below which its interval is too rough to judge.
MIN_USERS, MIN_PAIRS = 20, 200
#: A group's users on each seed below which that seed's bootstrap stratum is degenerate (see the module docstring).
MIN_SEED_USERS = 5
REASON_TOO_FEW = "too few {what}: {group} has {count} (< {minimum}){where}"


@dataclass(frozen=True)
class GroupCounts:
    """One group's users and test pairs: in total over the seeds, and its fewest users on one seed (which seed)."""

    users: int
    pairs: int
    seeds: int = 1
    fewest_users: int | None = None
    fewest_seed: Any = None

    @classmethod
    def of_seeds(cls, users: Mapping[Any, int], pairs: Mapping[Any, int]) -> GroupCounts:
        """From per-seed counts (seed → users, seed → test pairs)."""
        fewest_seed, fewest = min(users.items(), key=lambda item: item[1]) if users else (None, 0)
        return cls(int(sum(users.values())), int(sum(pairs.values())), len(users), int(fewest), fewest_seed)


def shortfall(counts: GroupCounts, group: str, *, min_users: int = MIN_USERS, min_pairs: int = MIN_PAIRS,
              min_seed_users: int = MIN_SEED_USERS, pairs_word: str = "test pairs") -> str | None:
    """Why ``group`` is too small to judge ("too few users: minority has 12 (< 20) over 3 seeds"), or None.
    ``pairs_word`` names the pairs counted (an audit judges all of a file's pairs: "judged pairs")."""
    several = counts.seeds > 1
    for what, count, minimum in (("users", counts.users, min_users), (pairs_word, counts.pairs, min_pairs)):
        if count < minimum:
            where = f" over {counts.seeds} seeds" if several else ""
            return REASON_TOO_FEW.format(what=what, group=group, count=count, minimum=minimum, where=where)
    if several and counts.fewest_users is not None and counts.fewest_users < min_seed_users:
        return REASON_TOO_FEW.format(what="users", group=group, count=counts.fewest_users, minimum=min_seed_users,
                                     where=f" on seed {counts.fewest_seed}")
    return None
