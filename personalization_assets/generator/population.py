"""The simulated people: per-person attributes and state as numpy arrays (memory O(users), not O(events)).

Persons 0..n_regular-1 are the random population; after them come the planted persons (scripted cases,
never sampled at random) and, only when the population is too small, spare registered persons that
the junk-anonymousId case links to. Identifiers (userId, anonymousIds, IPs) are hashes of a person's
stable key, so they are computed on demand instead of stored.
"""

from __future__ import annotations

import bisect
import datetime as dt
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.batch import JUNK_DEVICE
from personalization_assets.generator.encode import mix, splitmix64

PLANTED_KEY_BASE = 1 << 40
SPARE_KEY_BASE = 1 << 41
NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class PlantedPerson:
    case: str
    country: str
    region: str | None
    gpc: bool = False


@dataclass(frozen=True)
class Identity:
    first: str
    last: str
    email: str
    phone: str
    birth_date: str
    signup_ms: int
    plan: str


@lru_cache(maxsize=4096)
def _ascii(s: str) -> str:
    s = s.replace("ß", "ss").replace("ł", "l").replace("Ł", "L")
    return "".join(c for c in unicodedata.normalize("NFKD", s) if c.isascii() and c.isalnum()).lower()


class Population:
    def __init__(self, salt: int, arrays: dict[str, np.ndarray], n_regular: int, n_planted: int):
        self.salt = salt
        self.n_regular, self.n_planted = n_regular, n_planted
        for name, arr in arrays.items():
            setattr(self, name, arr)
        self.n = int(self.key.shape[0])
        self.n_spare = self.n - n_regular - n_planted
        self.keyset = np.array([loc.country == "US" for loc in vocab.LOCATIONS], dtype=np.int16)[self.loc]
        # mutable simulation state
        self.seen = np.zeros(self.n, np.uint8)  # bit d: device d has visited before
        self.logged = np.zeros(self.n, np.uint8)  # bit d: device d is logged in
        self.withdrawn = np.zeros(self.n, bool)

    def grant_everything(self) -> None:
        """Benchmark scenario: every person consents to every category, never withdraws, sends no GPC."""
        self.all_consent = True
        self.consenter[:] = True
        self.grant[:] = (1 << 7) - 1
        self.gpc[:] = False
        self.withdraw_at[:] = NEVER

    @classmethod
    def build(cls, rng: np.random.Generator, n_regular: int, planted: list[PlantedPerson], salt: int,
              t0: int, t1: int, min_registered: int = 40) -> Population:
        n = n_regular
        loc_p = np.array([loc.weight for loc in vocab.LOCATIONS])
        a = {
            "loc": rng.choice(len(loc_p), size=n, p=loc_p / loc_p.sum()).astype(np.uint8),
            "registered": rng.random(n) < 0.75,
            "ndev": rng.choice(3, size=n, p=[0.65, 0.25, 0.1]).astype(np.uint8) + 1,
            "weight": np.minimum(rng.pareto(1.2, n) + 1.0, 200.0),
            "cat": rng.dirichlet(np.array(vocab.CATEGORY_POPULARITY) * 6.0, size=n).astype(np.float32) if n else np.zeros((0, 10), np.float32),
            "consenter": rng.random(n) < 0.88,
            "grant": (rng.random((n, 7)) < np.array(vocab.CONSENT_GRANT_P)) @ (1 << np.arange(7)),
            "echo": rng.random(n) < 0.5,
            "alias": rng.random(n) < 0.06,
            "loc_alt": rng.random(n) < 0.15,
        }
        a["gpc"] = rng.random(n) < np.where(np.array([loc.region == "US-CA" for loc in vocab.LOCATIONS])[a["loc"]], 0.3, 0.02)
        withdraws = a["consenter"] & (a["grant"] & vocab.BIT["personalization"] > 0) & (rng.random(n) < 0.05)
        at = (t0 + (0.15 + 0.85 * rng.random(n)) * (t1 - t0)).astype(np.int64)
        a["withdraw_at"] = np.where(withdraws, at, NEVER)
        a["key"] = np.arange(n, dtype=np.uint64)
        n_spare = max(0, min_registered - int(a["registered"].sum()))
        extra = [(PLANTED_KEY_BASE + i, vocab.location_index(p.country, p.region), p.gpc) for i, p in enumerate(planted)]
        extra += [(SPARE_KEY_BASE + j, j % len(vocab.LOCATIONS), False) for j in range(n_spare)]
        m = len(extra)
        fill = {"registered": True, "ndev": 1, "weight": 0.0, "consenter": False, "grant": 0, "echo": False, "alias": False,
                "loc_alt": False, "withdraw_at": NEVER}
        for name, value in fill.items():
            a[name] = np.concatenate([a[name], np.full(m, value, dtype=a[name].dtype)])
        a["cat"] = np.concatenate([a["cat"], np.full((m, 10), 0.1, np.float32)])
        a["key"] = np.concatenate([a["key"], np.array([e[0] for e in extra], np.uint64)])
        a["loc"] = np.concatenate([a["loc"], np.array([e[1] for e in extra], np.uint8)])
        a["gpc"] = np.concatenate([a["gpc"], np.array([e[2] for e in extra], bool)])
        a["grant"] = a["grant"].astype(np.uint8)
        a["cdf"] = np.cumsum(a.pop("weight"))
        a["cat_cdf"] = np.cumsum(a.pop("cat"), axis=1, dtype=np.float32)
        return cls(salt, a, n_regular, len(planted))

    # ---------------------------------------------------------------- sampling
    def sample_users(self, rng: np.random.Generator, k: int) -> np.ndarray:
        r = rng.random(k) * self.cdf[self.n_regular - 1]
        return np.minimum(np.searchsorted(self.cdf, r, side="right"), self.n_regular - 1).astype(np.int64)

    def sample_devices(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        # the first device (usually the main browser) gets most sessions
        return np.minimum(self.ndev[users] * rng.random(users.shape[0]) ** 1.6, self.ndev[users] - 1).astype(np.uint8)

    def sample_categories(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        r = rng.random(users.shape[0]).astype(np.float32)[:, None]
        return np.minimum((self.cat_cdf[users] < r).sum(axis=1), 9)

    # ---------------------------------------------------------------- derived identifiers
    def _salt(self, tag: int) -> int:
        return (self.salt * 0x100000001B3 + tag) & 0xFFFFFFFFFFFFFFFF

    def _h(self, users: np.ndarray, devs: np.ndarray | int, tag: int) -> np.ndarray:
        k = self.key[users] * np.uint64(4) + np.asarray(devs, dtype=np.uint64)
        return splitmix64(k ^ np.uint64(self._salt(tag)))

    def device_type(self, users: np.ndarray, devs: np.ndarray) -> np.ndarray:
        r = (self._h(users, devs, 1) & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
        devs = np.asarray(devs)
        main = np.searchsorted([0.55, 0.8, 0.9], r, side="right")
        other = np.searchsorted([0.1, 0.4, 0.7], r, side="right")
        t = np.where(devs == 0, main, other).astype(np.uint8)
        t = np.where(users >= self.n_regular, vocab.WEB_DESKTOP, t)
        return np.where(devs == JUNK_DEVICE, vocab.APP_ANDROID, t).astype(np.uint8)

    def uid_bits(self, users: np.ndarray) -> np.ndarray:
        return self._h(users, 0, 2)

    def aid_bits(self, users: np.ndarray, devs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        junk = np.asarray(devs) == JUNK_DEVICE
        hi = np.where(junk, np.uint64(0), self._h(users, devs, 3))
        lo = np.where(junk, np.uint64(0), self._h(users, devs, 4))
        return hi, lo

    def device_hash(self, users: np.ndarray, devs: np.ndarray) -> np.ndarray:
        return self._h(users, devs, 5)

    def user_id(self, person: int) -> str:
        """Scalar twin of ``uid_bits`` (same hash), for CRM rows, requests and the manifest."""
        return f"usr_{mix((int(self.key[person]) * 4) ^ self._salt(2)):016x}"

    def anonymous_id(self, person: int, dev: int) -> str:
        from personalization_assets.generator.encode import rows, uuid_matrix

        hi, lo = self.aid_bits(np.array([person]), np.array([dev]))
        return rows([uuid_matrix(hi, lo)])[0].decode()

    # ---------------------------------------------------------------- personal data
    def location(self, person: int) -> vocab.Location:
        return vocab.LOCATIONS[int(self.loc[person])]

    def identity(self, person: int) -> Identity:
        key = int(self.key[person])
        h = mix(key ^ (self.salt * 31 + 7) & 0xFFFFFFFFFFFFFFFF)
        loc = self.location(person)
        firsts, lasts = vocab.NAMES[loc.names]
        first, last = firsts[h % len(firsts)], lasts[(h >> 8) % len(lasts)]
        f, l_ = _ascii(first), _ascii(last)
        num = str(key) if key < PLANTED_KEY_BASE else (f"p{key - PLANTED_KEY_BASE}" if key < SPARE_KEY_BASE else f"s{key - SPARE_KEY_BASE}")
        local = (f"{f}.{l_}{num}", f"{f[0]}{l_}{num}", f"{f}_{l_}.{num}", f"{l_}.{f}{num}")[(h >> 16) % 4]
        email = f"{local}@{vocab.EMAIL_DOMAINS[(h >> 20) % len(vocab.EMAIL_DOMAINS)]}"
        birth = _BIRTH0 + dt.timedelta(days=(h >> 28) % (56 * 365))
        plan = vocab.CRM_PLANS[min(bisect.bisect_right(_PLAN_CDF, ((h >> 40) % 1000) / 1000.0), len(vocab.CRM_PLANS) - 1)]
        signup = 1_514_764_800_000 + int((h >> 12) % (6 * 365 * 86400)) * 1000  # 2018-01-01 + up to 6 years
        return Identity(first, last, email, _phone(loc, h >> 32), birth.isoformat(), signup, plan)


_BIRTH0 = dt.date(1950, 1, 1)
_PLAN_CDF = np.cumsum(vocab.CRM_PLAN_WEIGHTS).tolist()
_US_AREAS = ("415", "213", "212", "512", "305", "206", "312", "703", "720", "646")


def _phone(loc: vocab.Location, h: int) -> str:
    """E.164-ish phone numbers with the varied formatting real sign-up forms produce."""
    style = h % 4
    h >>= 2
    if loc.phone_cc == "1":
        area, line = _US_AREAS[h % len(_US_AREAS)], f"01{(h >> 4) % 100:02d}"  # 555-01xx: reserved fictional numbers
        return (f"+1{area}555{line}", f"+1 {area}-555-{line}", f"({area}) 555-{line}", f"{area}.555.{line}")[style]
    national = f"{1 + (h >> 4) % 9}{(h >> 8) % 10**8:08d}"
    cc = loc.phone_cc
    return (f"+{cc}{national}", f"+{cc} {national[:3]} {national[3:6]} {national[6:]}", f"00{cc} {national[:3]} {national[3:]}",
            f"0{national[:3]} {national[3:]}")[style]
