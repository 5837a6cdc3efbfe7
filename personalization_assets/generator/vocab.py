"""Static vocabularies of the demo data: locations, names, user agents, content categories, prices.

Everything here is plain data; the other modules index into it with numpy arrays. All domains are
IANA-reserved (example.com/.net/.org) so no generated email can reach a real mailbox.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    country: str  # ISO 3166-1 alpha-2
    region: str | None  # ISO 3166-2, absent for some
    locales: tuple[str, ...]  # first is the usual one
    currency: str
    jurisdiction: str  # as written on privacy requests
    phone_cc: str
    names: str  # key of NAMES
    weight: float  # share of users, in percent


def _eu(country, region, locales, names, weight, currency="EUR", cc=""):
    return Location(country, region, locales, currency, "EU", cc, names, weight)


# ~45% EU, 20% US-CA, 20% other US states, 15% elsewhere.
LOCATIONS: tuple[Location, ...] = (
    _eu("DE", "DE-BE", ("de-DE", "en-US"), "de", 3.0, cc="49"),
    _eu("DE", "DE-BY", ("de-DE",), "de", 3.0, cc="49"),
    _eu("DE", None, ("de-DE", "en-GB"), "de", 4.0, cc="49"),
    _eu("FR", "FR-IDF", ("fr-FR",), "fr", 4.0, cc="33"),
    _eu("FR", None, ("fr-FR", "en-US"), "fr", 4.0, cc="33"),
    _eu("IT", "IT-62", ("it-IT",), "it", 3.0, cc="39"),
    _eu("IT", None, ("it-IT",), "it", 3.0, cc="39"),
    _eu("ES", "ES-MD", ("es-ES",), "es", 3.0, cc="34"),
    _eu("ES", "ES-CT", ("es-ES", "ca-ES"), "es", 3.0, cc="34"),
    _eu("NL", "NL-NH", ("nl-NL", "en-GB"), "nl", 4.0, cc="31"),
    _eu("PL", "PL-14", ("pl-PL",), "pl", 3.0, currency="PLN", cc="48"),
    _eu("SE", "SE-AB", ("sv-SE", "en-US"), "sv", 2.0, currency="SEK", cc="46"),
    _eu("BE", "BE-BRU", ("fr-BE", "nl-BE"), "fr", 2.0, cc="32"),
    _eu("AT", "AT-9", ("de-AT",), "de", 2.0, cc="43"),
    _eu("IE", None, ("en-IE",), "en", 1.0, cc="353"),
    _eu("PT", "PT-11", ("pt-PT",), "pt", 1.0, cc="351"),
    Location("US", "US-CA", ("en-US", "es-US"), "USD", "US-CA", "1", "en", 20.0),
    Location("US", "US-NY", ("en-US",), "USD", "US-NY", "1", "en", 5.0),
    Location("US", "US-TX", ("en-US", "es-US"), "USD", "US-TX", "1", "en", 5.0),
    Location("US", "US-FL", ("en-US", "es-US"), "USD", "US-FL", "1", "en", 3.0),
    Location("US", "US-WA", ("en-US",), "USD", "US-WA", "1", "en", 2.0),
    Location("US", "US-IL", ("en-US",), "USD", "US-IL", "1", "en", 2.0),
    Location("US", "US-VA", ("en-US",), "USD", "US-VA", "1", "en", 1.5),
    Location("US", "US-CO", ("en-US",), "USD", "US-CO", "1", "en", 1.5),
    Location("GB", "GB-LND", ("en-GB",), "GBP", "UK", "44", "en", 3.0),
    Location("GB", None, ("en-GB",), "GBP", "UK", "44", "en", 2.0),
    Location("CA", "CA-ON", ("en-CA", "fr-CA"), "CAD", "CA", "1", "en", 2.0),
    Location("BR", "BR-SP", ("pt-BR",), "BRL", "BR", "55", "pt", 2.0),
    Location("JP", None, ("ja-JP",), "JPY", "JP", "81", "ja", 1.5),
    Location("IN", "IN-MH", ("en-IN", "hi-IN"), "INR", "IN", "91", "in", 1.5),
    Location("AU", "AU-NSW", ("en-AU",), "AUD", "AU", "61", "en", 1.5),
    Location("CH", "CH-ZH", ("de-CH", "fr-CH"), "CHF", "CH", "41", "de", 1.5),
)


def location_index(country: str, region: str | None) -> int:
    for i, loc in enumerate(LOCATIONS):
        if loc.country == country and loc.region == region:
            return i
    raise KeyError((country, region))


NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "de": (("Lena", "Jonas", "Anna", "Lukas", "Marie", "Felix", "Sophie", "Maximilian", "Jürgen", "Hannah", "Paul", "Katrin"),
           ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Hoffmann", "Schäfer", "Koch", "Richter")),
    "fr": (("Camille", "Louis", "Léa", "Hugo", "Chloé", "Lucas", "Manon", "Théo", "Inès", "Nathan", "Zoé", "Jules"),
           ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Lefèvre", "Moreau", "Laurent", "Girard")),
    "it": (("Giulia", "Francesco", "Sofia", "Alessandro", "Aurora", "Lorenzo", "Chiara", "Matteo", "Martina", "Niccolò"),
           ("Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino", "Greco")),
    "es": (("Lucía", "Hugo", "María", "Martín", "Paula", "Pablo", "Daniela", "Álvaro", "Carmen", "Javier"),
           ("García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Ruiz")),
    "nl": (("Emma", "Daan", "Julia", "Sem", "Tess", "Lucas", "Sanne", "Bram", "Fleur", "Thijs"),
           ("de Jong", "Jansen", "de Vries", "van den Berg", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder")),
    "pl": (("Zofia", "Jakub", "Julia", "Antoni", "Maja", "Szymon", "Hanna", "Łukasz", "Alicja", "Kacper"),
           ("Nowak", "Kowalski", "Wiśniewski", "Wójcik", "Kowalczyk", "Kamiński", "Lewandowski", "Zieliński", "Szymański", "Dąbrowski")),
    "sv": (("Alice", "William", "Maja", "Hugo", "Elsa", "Oscar", "Astrid", "Liam", "Saga", "Nils"),
           ("Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson", "Svensson", "Gustafsson")),
    "en": (("Olivia", "James", "Emma", "Liam", "Ava", "Noah", "Sophia", "Ethan", "Mia", "Lucas", "Isabella", "Mason", "Chloe", "Diego", "Priya", "Wei"),
           ("Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Garcia", "Wilson", "Anderson", "Taylor", "Nguyen", "O'Brien", "Patel", "Kim", "Lee")),
    "pt": (("Maria", "João", "Ana", "Pedro", "Beatriz", "Miguel", "Mariana", "Gabriel", "Larissa", "Rafael"),
           ("Silva", "Santos", "Oliveira", "Souza", "Pereira", "Costa", "Ferreira", "Almeida", "Carvalho", "Gonçalves")),
    "ja": (("Yui", "Haruto", "Aoi", "Sota", "Hina", "Ren", "Sakura", "Yuto", "Mei", "Riku"),
           ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura", "Kobayashi", "Kato")),
    "in": (("Aarav", "Ananya", "Vihaan", "Diya", "Arjun", "Saanvi", "Rohan", "Isha", "Kabir", "Meera"),
           ("Sharma", "Verma", "Gupta", "Patel", "Reddy", "Iyer", "Singh", "Nair", "Das", "Rao")),
}

EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com", "post.example.net", "inbox.example.org")

CATEGORIES = ("news", "sports", "tech", "culture", "finance", "travel", "food", "science", "health", "entertainment")
CATEGORY_POPULARITY = (0.2, 0.14, 0.12, 0.06, 0.08, 0.08, 0.09, 0.06, 0.08, 0.09)

TOPICS: dict[str, tuple[str, ...]] = {
    "news": ("the election", "the city budget", "public transport", "housing costs", "the climate summit", "energy prices", "local schools", "the new border rules"),
    "sports": ("the title race", "the transfer window", "the marathon", "the cup final", "women's football", "the tennis season", "cycling", "the Olympics"),
    "tech": ("AI assistants", "quantum chips", "smartphone batteries", "open-source software", "electric cars", "data privacy", "cloud costs", "chip supply"),
    "culture": ("the art fair", "modern opera", "street photography", "the book prize", "indie theatre", "museum nights", "jazz festivals", "architecture"),
    "finance": ("interest rates", "index funds", "inflation", "the housing market", "pension plans", "crypto rules", "startup funding", "household budgets"),
    "travel": ("night trains", "island hopping", "city breaks", "hiking trails", "budget airlines", "road trips", "hidden beaches", "winter escapes"),
    "food": ("sourdough", "plant-based cooking", "street food", "fermentation", "weeknight pasta", "coffee culture", "regional wines", "meal prep"),
    "science": ("black holes", "gene editing", "ocean currents", "the Mars mission", "bird migration", "fusion energy", "ancient DNA", "climate models"),
    "health": ("sleep", "running injuries", "gut health", "stress", "vaccines", "strength training", "screen time", "healthy ageing"),
    "entertainment": ("the streaming wars", "the season finale", "summer blockbusters", "reality TV", "the award shows", "video games", "podcasts", "concert tours"),
}
TITLE_PATTERNS = (
    "What {topic} means for you",
    "{n} things to know about {topic}",
    "How {topic} is changing",
    "The truth about {topic}",
    "Inside {topic}: a closer look",
    "Why everyone is talking about {topic}",
    "A beginner's guide to {topic}",
    "{topic}: the week in review",
)
TAGS: dict[str, tuple[str, ...]] = {
    "news": ("politics", "europe", "us", "local", "breaking", "analysis"),
    "sports": ("football", "tennis", "running", "cycling", "results", "transfers"),
    "tech": ("ai", "gadgets", "privacy", "software", "mobility", "hardware"),
    "culture": ("art", "books", "music", "theatre", "design", "film"),
    "finance": ("markets", "savings", "economy", "investing", "crypto", "jobs"),
    "travel": ("europe", "budget", "rail", "outdoors", "city", "beaches"),
    "food": ("recipes", "vegan", "restaurants", "wine", "baking", "quick"),
    "science": ("space", "biology", "climate", "physics", "nature", "research"),
    "health": ("fitness", "sleep", "nutrition", "mental-health", "medicine", "ageing"),
    "entertainment": ("tv", "movies", "games", "celebrities", "streaming", "music"),
}
AUTHORS = ("Ada Brenner", "Tomás Ruiz", "Nora Lind", "Kenji Mori", "Claire Dupont", "Sam Okafor", "Ines Weber", "Marco Bellini",
           "Priya Nair", "Jonah Fields", "Elena Petrova", "Lucas Moreau")

SITE = "https://www.example.com"
REFERRERS = ("", "https://www.google.com/", "https://www.example.com/", "https://t.co/", "https://www.facebook.com/",
             "https://news.ycombinator.com/", "https://www.reddit.com/", "https://duckduckgo.com/")
REFERRER_WEIGHTS = (0.25, 0.3, 0.25, 0.05, 0.05, 0.03, 0.04, 0.03)
SHARE_CHANNELS = ("whatsapp", "email", "copy_link", "x", "facebook")

# device types: 0 desktop web, 1 mobile web, 2 iOS app, 3 Android app
WEB_DESKTOP, WEB_MOBILE, APP_IOS, APP_ANDROID = 0, 1, 2, 3
USER_AGENTS: tuple[tuple[str, ...], ...] = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Mobile Safari/537.36",
    ),
    ("DailyReader/5.2.1 (iPhone; iOS 17.4.1; Scale/3.00)", "DailyReader/5.1.0 (iPhone; iOS 16.7.2; Scale/3.00)", "DailyReader/5.2.1 (iPad; iOS 17.3; Scale/2.00)"),
    ("DailyReader/5.2.0 (Linux; Android 14; Pixel 8)", "DailyReader/5.2.0 (Linux; Android 13; SM-A546B)", "DailyReader/4.9.3 (Linux; Android 12; moto g32)"),
)
LIBRARIES = (
    ("analytics.js", "2.11.3"),
    ("analytics.js", "2.11.3"),
    ("analytics-ios", "4.1.8"),
    ("analytics-android", "4.11.3"),
)

CONSENT_CATEGORIES = ("functional", "analytics", "performance", "personalization", "advertising", "marketing", "data_sharing")
BIT = {c: 1 << i for i, c in enumerate(CONSENT_CATEGORIES)}
# probability that a consenting user grants each category
CONSENT_GRANT_P = (0.95, 0.7, 0.55, 0.8, 0.45, 0.4, 0.35)
# consent banners: EU-style sites do not ask about data_sharing; US sites do (CCPA "sale/share")
CONSENT_KEYSETS = (CONSENT_CATEGORIES[:6], CONSENT_CATEGORIES)

# price points (in USD) for single items, and subscription plans
ITEM_PRICES_USD = (0.99, 1.99, 2.99, 4.99, 7.99)
PLANS = ("premium_monthly", "premium_annual", "student_monthly")
PLAN_PRICES_USD = (9.99, 99.0, 4.99)
CRM_PLANS = ("free", "premium_monthly", "premium_annual", "student_monthly")
CRM_PLAN_WEIGHTS = (0.6, 0.25, 0.1, 0.05)
CURRENCY_RATE = {"EUR": 0.95, "USD": 1.0, "GBP": 0.8, "PLN": 4.0, "SEK": 10.5, "CAD": 1.35, "BRL": 5.0, "JPY": 150.0, "INR": 80.0,
                 "AUD": 1.5, "CHF": 0.9}


def local_price(usd: float, currency: str) -> str:
    """A 'pretty' local price point as JSON number text (e.g. 4.99 USD -> 4.99 EUR, 749 JPY)."""
    x = usd * CURRENCY_RATE[currency]
    if currency in ("JPY", "INR"):
        return str(max(10, round(x / 10.0) * 10 - 1))
    if x >= 20:
        return f"{round(x):.2f}"
    return f"{max(0, int(x)) + 0.99:.2f}" if x >= 1 else "0.99"
