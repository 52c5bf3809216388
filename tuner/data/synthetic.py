"""MSD-shaped synthetic data: a stand-in for UCI YearPredictionMSD when the real file is absent.

The real data set has one row per song: the release year, then 12 timbre averages and 78
timbre covariances (12 variances, then the 66 upper-triangle covariances) computed from
segment-level timbre vectors. The tuner classifies the year by decade. Tests, benchmarks and
CI need data of the same shape and similar difficulty without downloading 200 MB, so this
module fakes it.

Generative model (vectorised, in blocks of rows):

1. **Decade and year.** Decade counts follow the real prior (:data:`DECADE_COUNTS`, exact at
   the real size, largest-remainder proportional otherwise); rows are shuffled. The year is the
   decade start plus a uniform 0..9, clipped into 1922..2011 like the real range.
2. **Era.** The year is warped to ``u = asinh((year - 1998) / 8)``, which spreads the crowded
   1990s/2000s and compresses the sparse early decades. Everything below depends on the year
   only through smooth functions of ``u``, so neighbouring decades (and the years either side
   of a decade boundary) are confusable and distant ones are not.
3. **Latent song vector** ``z`` (26 dims), four blocks:

   * *genre* (12 dims): each song belongs to one of 128 genres whose popularity rises and falls
     over the era (Gaussian bumps in ``u``); the song sits around the genre's centre, shifted
     along the genre's own drift direction by its distance from the genre's heyday. Which
     genre, and where inside it, both carry the era: a piecewise, many-cluster signal that a
     linear model mostly cannot use and that rewards network capacity;
   * *trend* (4 dims): a weak global curved path along the era (the part a linear model sees)
     whose spread also changes with the era (signal in the variance);
   * *coupled pairs* (2 x 2 dims): the correlation inside each pair drifts with the era, so the
     signal is only in their product;
   * *style* (6 dims): nuisance variation independent of the year.

4. **Features** are fixed nonlinear mixings of ``z`` plus noise, laid out like the real columns:

   * 12 averages: location + scale * (linear mix + ``tanh`` mix + Student-t noise), with
     locations/scales like the real ones (col 1 about 43 +- 6, col 2 about 1 +- 50, ...);
   * 12 variances: ``scale * exp(mix + noise)``: positive, log-normal, heavy right tail,
     medians from about 60 to 2,700;
   * 66 covariances: ``k * sd_i * sd_j * tanh(mix + noise)`` with the song's ``sd = sqrt(var)``
     times a shared log-normal "dynamics" factor: both signs, heavy tails, column scales from
     about 30 to 3,000.

5. **Gross outliers.** About 0.3% of the rows get 1-3 columns shifted by 5-25 typical column
   scales (upwards for the variances, so they stay positive).

The mixing weights come from a fixed internal seed (:data:`_STRUCTURE_SEED`): every ``seed``
samples the same "world", so the calibration holds for all seeds, and ``seed`` only drives the
sampling. Calibration on the full 515,345 rows (seed 0, stratified 70/15/15 split,
StandardScaler fitted on train, test accuracy): majority class (2000s) 58.0%; logistic
regression 58.8%; a 256x256 GELU MLP with Adam (lr 1e-3, batch 128) 67.7% at its best epoch
(the 4th), drifting to 67.2% by the 10th as it starts to overfit; a 512x512x512 GELU MLP with
dropout 0.3 68.0%. Errors fall mostly on the neighbouring decade. On 100,000 rows the 256x256
MLP peaks at about 65.5%. The real data set gives about 66% for such an MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DECADE_COUNTS: tuple[int, ...] = (224, 252, 356, 3102, 11739, 24745, 41814, 124713, 299003, 9397)
"""Rows per decade (1920s..2010s) in the real YearPredictionMSD.txt; they sum to 515,345."""

N_FEATURES = 90
"""Feature columns after the year: 12 timbre averages + 78 timbre covariances."""

GENERATOR_VERSION = 1
"""Bump when :func:`generate` output for a given ``(rows, seed)`` changes (used in cache keys)."""

FULL_ROWS = 515_345
"""Rows in the real data set (``sum(DECADE_COUNTS)``)."""

YEAR_MIN = 1922
YEAR_MAX = 2011
FIRST_DECADE = 1920

_N_AVG = 12
_N_COV = N_FEATURES - _N_AVG  # 78 = 12 variances + 66 covariances
_N_PAIRS = _N_COV - _N_AVG  # 66
_N_GENRES = 128
_N_GENRE_DIM = 12
_N_TREND = 4
_N_COUPLED_PAIRS = 2
_N_STYLE = 6
_N_LATENT = _N_GENRE_DIM + _N_TREND + 2 * _N_COUPLED_PAIRS + _N_STYLE

_STRUCTURE_SEED = 19_220_011
"""Seed of the fixed mixing structure (the "world"); independent of the sampling seed."""

_OUTLIER_RATE = 0.003
"""Fraction of rows that receive gross outliers."""

# Calibration knobs (see the module docstring for the measured accuracies).
_GENRE_SEP = 2.5
"""Spread of the genre centres in the genre block, in units of the within-genre noise."""
_GENRE_DRIFT = 1.1
"""Within-genre drift per unit era, each genre along its own direction (piecewise signal)."""
_SIGNAL = 0.35
"""Global trend along the era shared by all songs (the part a linear model can use)."""
_HETERO = 1.0
"""Era dependence of the trend block's spread (signal in the variance)."""
_COUPLING = 0.6
"""Era drift of the correlation inside each coupled pair (signal only in products)."""

_COV_DYNAMICS = 0.35
"""Log-scale of the shared per-song factor on the covariances (applied to each sd, so twice
that on the covariance): heavier covariance tails."""

# Location and scale of the 12 timbre averages, loosely following the real columns.
_AVG_LOC = np.array([43.4, 1.3, 8.7, 1.2, -6.6, -9.5, -2.4, -1.8, 3.7, 1.9, -0.1, 0.8])
_AVG_SD = np.array([6.1, 51.6, 35.3, 16.3, 22.9, 12.9, 14.6, 8.0, 10.6, 6.3, 8.8, 5.1])
# Median scale of the 12 timbre variances.
_VAR_SCALE = np.array(
    [2100.0, 2700.0, 1750.0, 800.0, 500.0, 360.0, 190.0, 120.0, 110.0, 90.0, 70.0, 60.0]
)


def _era(years: np.ndarray) -> np.ndarray:
    """Warp calendar years to the era coordinate: spreads the crowded 1990s/2000s (about one
    unit per decade there) and compresses the sparse early decades."""
    return np.arcsinh((np.asarray(years, dtype=np.float64) - 1998.0) / 8.0)


@dataclass(frozen=True)
class _Structure:
    """Fixed parameters of the generative model, drawn once from :data:`_STRUCTURE_SEED`."""

    genre_peak: np.ndarray  # (G,) era at which each genre is most popular
    genre_width: np.ndarray  # (G,) width of its popularity curve (era units)
    genre_base: np.ndarray  # (G,) log-popularity at the peak
    genre_centre: np.ndarray  # (G, D) centre in the genre block
    genre_drift: np.ndarray  # (G, D) unit drift direction in the genre block
    trend_slope: np.ndarray  # (4,) linear drift of the trend block along the era
    trend_amp: np.ndarray  # (4,) sinusoid amplitudes
    trend_freq: np.ndarray  # (4,) sinusoid frequencies (per unit era)
    trend_phase: np.ndarray  # (4,)
    trend_hetero: np.ndarray  # (4,) log-spread slope along the era
    couple_offset: np.ndarray  # (pairs,) era offset of each coupled pair's correlation drift
    avg_lin: np.ndarray  # (L, 12)
    avg_nl_in: np.ndarray  # (L, 12)
    avg_nl_out: np.ndarray  # (12,)
    lvar_lin: np.ndarray  # (L, 12)
    lvar_sd: np.ndarray  # (12,) log-variance spread per column
    rho_lin: np.ndarray  # (L, 66)
    cov_scale: np.ndarray  # (66,) multiplier setting each covariance column's scale
    col_scale: np.ndarray  # (90,) typical scale of each output column (for outliers)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    """Scale each row of ``m`` to unit Euclidean norm."""
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _unit_columns(m: np.ndarray) -> np.ndarray:
    """Scale each column of ``m`` to unit Euclidean norm, so mixes of unit-variance latents
    have roughly unit variance whatever the number of inputs."""
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def _structure() -> _Structure:
    """Draw the fixed mixing structure. Cheap (small matrices), so it is rebuilt on each call
    instead of being cached in module state."""
    rng = np.random.default_rng(_STRUCTURE_SEED)
    pair_i, pair_j = np.triu_indices(_N_AVG, k=1)
    # Covariance column scale ~ log-uniform 10..1000, divided by the typical sqrt(var_i var_j)
    # so that the product lands near that scale.
    target = np.exp(rng.uniform(np.log(10.0), np.log(1000.0), size=_N_PAIRS))
    typical = np.sqrt(_VAR_SCALE[pair_i] * _VAR_SCALE[pair_j]) * 0.45
    # Genres peak between the 1950s and 2011, most of them in the crowded recent decades.
    peak_years = np.concatenate(
        [rng.uniform(1950.0, 1985.0, size=4), rng.uniform(1980.0, 2012.0, size=_N_GENRES - 4)]
    )
    return _Structure(
        genre_peak=_era(peak_years),
        genre_width=rng.uniform(0.4, 1.0, size=_N_GENRES),
        genre_base=rng.normal(0.0, 0.5, size=_N_GENRES),
        genre_centre=rng.normal(size=(_N_GENRES, _N_GENRE_DIM)),
        genre_drift=_unit_rows(rng.normal(size=(_N_GENRES, _N_GENRE_DIM))),
        trend_slope=rng.uniform(-1.0, 1.0, size=_N_TREND),
        trend_amp=rng.uniform(0.4, 1.0, size=_N_TREND),
        trend_freq=rng.uniform(0.6, 1.6, size=_N_TREND),
        trend_phase=rng.uniform(0.0, 2.0 * np.pi, size=_N_TREND),
        trend_hetero=rng.uniform(0.2, 0.5, size=_N_TREND) * rng.choice([-1.0, 1.0], _N_TREND),
        couple_offset=rng.uniform(-0.5, 0.5, size=_N_COUPLED_PAIRS),
        avg_lin=_unit_columns(rng.normal(size=(_N_LATENT, _N_AVG))),
        avg_nl_in=_unit_columns(rng.normal(size=(_N_LATENT, _N_AVG))) * 1.5,
        avg_nl_out=rng.uniform(0.5, 1.0, size=_N_AVG) * rng.choice([-1.0, 1.0], size=_N_AVG),
        lvar_lin=_unit_columns(rng.normal(size=(_N_LATENT, _N_AVG))),
        lvar_sd=rng.uniform(0.5, 0.9, size=_N_AVG),
        rho_lin=_unit_columns(rng.normal(size=(_N_LATENT, _N_PAIRS))) * 1.2,
        cov_scale=target / typical,
        col_scale=np.concatenate([_AVG_SD, _VAR_SCALE, target]),
    )


def decade_counts(rows: int) -> np.ndarray:
    """Rows per decade for a data set of ``rows`` rows, proportional to :data:`DECADE_COUNTS`.

    Largest-remainder rounding in exact integer arithmetic (ties to the earlier decade), so
    the counts sum to ``rows``, equal :data:`DECADE_COUNTS` at the real size, and every decade
    gets at least ``floor(rows * share)`` rows (>= 2 each from about 4,600 rows on).
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    prior = np.array(DECADE_COUNTS, dtype=np.int64)
    total = int(prior.sum())
    scaled = prior * rows
    counts = scaled // total
    remainders = scaled % total
    short = rows - int(counts.sum())
    order = np.argsort(-remainders, kind="stable")
    counts[order[:short]] += 1
    return counts


def _student_t(rng: np.random.Generator, df: float, size: tuple[int, ...]) -> np.ndarray:
    """Student-t draws scaled to unit variance (``df > 2``), so the tails are heavy but the
    scale is comparable with Gaussian noise."""
    return rng.standard_t(df, size=size) * np.sqrt((df - 2.0) / df)


@dataclass(frozen=True)
class _YearTables:
    """Everything that depends on the year only, tabulated for the 90 years 1922..2011 so that
    the per-row work is a gather instead of transcendental functions."""

    era: np.ndarray  # (Y,)
    genre_cdf: np.ndarray  # (Y * G,) per-year genre CDFs, year k shifted to (k, k + 1]
    path: np.ndarray  # (Y, trend) mean of the trend block
    spread: np.ndarray  # (Y, trend) spread of the trend block
    corr: np.ndarray  # (Y, pairs) correlation inside each coupled pair
    corr_c: np.ndarray  # (Y, pairs) sqrt(1 - corr**2)


def _year_tables(st: _Structure) -> _YearTables:
    """Tabulate the era-dependent parameters for every possible year."""
    era = _era(np.arange(YEAR_MIN, YEAR_MAX + 1))[:, None]
    logits = st.genre_base - 0.5 * ((era - st.genre_peak) / st.genre_width) ** 2
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(prob, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    cdf += np.arange(len(era))[:, None]
    path = st.trend_slope * era + st.trend_amp * np.sin(st.trend_freq * era + st.trend_phase)
    corr = _COUPLING * np.tanh(era + st.couple_offset)
    return _YearTables(
        era=era[:, 0],
        genre_cdf=cdf.ravel(),
        path=_SIGNAL * path,
        spread=np.exp(_HETERO * st.trend_hetero * era),
        corr=corr,
        corr_c=np.sqrt(1.0 - corr**2),
    )


_BLOCK_ROWS = 16_384
"""Rows generated per block: keeps the temporaries small and cache-friendly. Changing it
changes the random stream, hence the output (bump :data:`GENERATOR_VERSION`)."""


def generate(rows: int = FULL_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate an MSD-shaped data set.

    Returns ``(years, features)``: ``years`` int64 of shape ``(rows,)`` in 1922..2011 whose
    decades follow :func:`decade_counts`, in shuffled order; ``features`` float64 of shape
    ``(rows, 90)`` laid out like the real file (12 timbre averages, 12 variances, 66
    covariances). Deterministic for a given ``(rows, seed)``; different seeds give different
    data from the same fixed model (see the module docstring).
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    st = _structure()
    tables = _year_tables(st)
    rng = np.random.default_rng(seed)

    counts = decade_counts(rows)
    decades = rng.permutation(np.repeat(np.arange(len(DECADE_COUNTS)), counts))
    years = FIRST_DECADE + 10 * decades + rng.integers(0, 10, size=rows)
    years = np.clip(years, YEAR_MIN, YEAR_MAX).astype(np.int64)

    features = np.empty((rows, N_FEATURES), dtype=np.float64)
    for start in range(0, rows, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, rows)
        _fill_block(rng, st, tables, years[start:stop] - YEAR_MIN, features[start:stop])
    _add_outliers(rng, features, st.col_scale)
    return years, features


def _fill_block(
    rng: np.random.Generator,
    st: _Structure,
    tables: _YearTables,
    year_idx: np.ndarray,
    out: np.ndarray,
) -> None:
    """Generate the features of one block of rows (years given as offsets from 1922) into
    ``out``: latent song vector first, then the three column groups."""
    n = year_idx.size
    z = np.empty((n, _N_LATENT), dtype=np.float64)

    # Genre block: each song belongs to a genre drawn from era-dependent popularity curves
    # (inverse-CDF sampling on the per-year tables); it sits around the genre's centre,
    # shifted along the genre's own drift direction by its distance from the genre's heyday.
    u = year_idx + rng.random(n)
    genre = np.searchsorted(tables.genre_cdf, u, side="left") - year_idx * _N_GENRES
    genre = np.clip(genre, 0, _N_GENRES - 1)
    rel = (tables.era[year_idx] - st.genre_peak[genre])[:, None]
    g_end = _N_GENRE_DIM
    genre_block = z[:, :g_end]
    genre_block[:] = rng.standard_normal((n, _N_GENRE_DIM))
    genre_block += _GENRE_SEP * st.genre_centre[genre]
    genre_block += _GENRE_DRIFT * rel * st.genre_drift[genre]
    genre_block /= np.sqrt(1.0 + _GENRE_SEP**2)  # back to about unit spread

    # Trend block: a global curved path along the era plus an era-dependent spread.
    t_end = g_end + _N_TREND
    z[:, g_end:t_end] = tables.spread[year_idx] * rng.standard_normal((n, _N_TREND))
    z[:, g_end:t_end] += tables.path[year_idx]

    # Coupled pairs: their correlation drifts with the era; the signal is only in products.
    c_end = t_end + 2 * _N_COUPLED_PAIRS
    first = rng.standard_normal((n, _N_COUPLED_PAIRS))
    z[:, t_end:c_end:2] = first
    second = tables.corr[year_idx] * first
    second += tables.corr_c[year_idx] * rng.standard_normal((n, _N_COUPLED_PAIRS))
    z[:, t_end + 1 : c_end : 2] = second

    # Style block: nuisance variation independent of the year.
    z[:, c_end:] = rng.standard_normal((n, _N_STYLE))

    # Timbre averages: linear + saturating mix plus t-noise, then per-column location/scale.
    avg = z @ st.avg_lin + st.avg_nl_out * np.tanh(z @ st.avg_nl_in)
    avg += 0.8 * _student_t(rng, 4.0, (n, _N_AVG))
    out[:, :_N_AVG] = _AVG_LOC + _AVG_SD * (avg / 1.5)

    # Timbre variances: log-normal around a per-column scale.
    lvar = z @ st.lvar_lin + 0.6 * rng.standard_normal((n, _N_AVG))
    var = _VAR_SCALE * np.exp(st.lvar_sd / 1.2 * lvar)
    out[:, _N_AVG : 2 * _N_AVG] = var

    # Timbre covariances: k * sqrt(var_i var_j) * correlation: both signs, heavy tails.
    cov = out[:, 2 * _N_AVG :]
    np.matmul(z, st.rho_lin, out=cov)
    cov += 0.7 * rng.standard_normal((n, _N_PAIRS))
    np.tanh(cov, out=cov)
    cov *= st.cov_scale
    # Songs with a wider timbre range have larger covariances all round: a shared log-normal
    # factor (driven by a style latent) fattens the tails of every covariance column.
    sd = np.sqrt(var) * np.exp(_COV_DYNAMICS * z[:, c_end : c_end + 1])
    start = 0
    for i in range(_N_AVG - 1):
        # Pairs (i, i+1..11) are contiguous in upper-triangle order: slice, don't gather.
        stop = start + _N_AVG - 1 - i
        cov[:, start:stop] *= sd[:, i : i + 1] * sd[:, i + 1 :]
        start = stop


def _add_outliers(rng: np.random.Generator, features: np.ndarray, scale: np.ndarray) -> None:
    """Add gross outliers in place: about :data:`_OUTLIER_RATE` of the rows get 1-3 columns
    shifted by 5-25 typical column scales (``scale``), upwards for the positive variances and
    either way elsewhere, like the odd songs with absurd timbre statistics in the real file."""
    rows = features.shape[0]
    n_out = int(round(rows * _OUTLIER_RATE))
    if n_out == 0:
        return
    which = rng.choice(rows, size=n_out, replace=False)
    for k in range(3):
        take = which if k == 0 else which[rng.random(n_out) < 0.5]
        cols = rng.integers(0, N_FEATURES, size=take.size)
        sign = np.where(rng.random(take.size) < 0.5, -1.0, 1.0)
        sign[(cols >= _N_AVG) & (cols < 2 * _N_AVG)] = 1.0
        features[take, cols] += sign * rng.uniform(5.0, 25.0, size=take.size) * scale[cols]


_WRITE_BLOCK_ROWS = 4_096
"""Rows formatted per string-formatting call in :func:`write_uci`."""


def write_uci(path: Path | str, years: np.ndarray, features: np.ndarray) -> None:
    """Write ``years`` and ``features`` in the exact UCI YearPredictionMSD.txt text format.

    One line per row: the year as an integer, then the 90 features formatted ``%.5f``, comma
    separated, ``\\n`` line ends, no header, so the loaders of the real file read the synthetic
    one unchanged. Blocks of rows are formatted with one ``%`` operation each (C-level
    formatting, no per-row Python loop), which is byte-identical to ``np.savetxt`` with the
    same format but faster.
    """
    years = np.asarray(years)
    features = np.asarray(features, dtype=np.float64)
    if years.ndim != 1 or features.ndim != 2 or features.shape != (years.size, N_FEATURES):
        raise ValueError(
            f"expected years of shape (n,) and features of shape (n, {N_FEATURES}); "
            f"got {years.shape} and {features.shape}"
        )
    if not np.array_equal(years, np.round(years)):
        raise ValueError("years must be whole numbers")
    if not np.isfinite(features).all():
        raise ValueError("features must be finite")
    line = "%d," + ",".join(["%.5f"] * N_FEATURES) + "\n"
    # Years travel as (whole) floats; "%d" prints them as integers.
    table = np.column_stack([years.astype(np.float64), features])
    with Path(path).open("w", encoding="ascii", newline="\n") as fh:
        for start in range(0, len(table), _WRITE_BLOCK_ROWS):
            block = table[start : start + _WRITE_BLOCK_ROWS]
            fh.write((line * len(block)) % tuple(block.ravel().tolist()))
