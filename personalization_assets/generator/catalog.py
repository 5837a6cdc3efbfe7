"""The content catalog: items grouped by category, popularity sampling, and pre-rendered JSON fragments."""

from __future__ import annotations

import json
import re

import numpy as np

from personalization_assets.generator import vocab
from personalization_assets.generator.encode import iso_seconds


def _j(s: str | None) -> str:
    return json.dumps(s, ensure_ascii=False)


class Catalog:
    def __init__(self, rng: np.random.Generator, n_items: int, t_end: int):
        pop = np.array(vocab.CATEGORY_POPULARITY)
        counts = np.maximum(5, np.floor(pop / pop.sum() * n_items)).astype(np.int64)
        self.cat_count = counts
        self.cat_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.n = int(counts.sum())
        self.category = np.repeat(np.arange(len(counts)), counts)
        self.items: list[dict] = []
        for i in range(self.n):
            cat = vocab.CATEGORIES[self.category[i]]
            topic = vocab.TOPICS[cat][rng.integers(len(vocab.TOPICS[cat]))]
            pattern = vocab.TITLE_PATTERNS[rng.integers(len(vocab.TITLE_PATTERNS))]
            title = pattern.format(topic=topic, n=int(rng.integers(3, 11)))
            title = title[0].upper() + title[1:]
            tags = rng.choice(vocab.TAGS[cat], size=int(rng.integers(1, 5)), replace=False).tolist()
            premium = bool(rng.random() < 0.25)
            price = int(rng.integers(len(vocab.ITEM_PRICES_USD))) if premium and rng.random() < 0.6 else -1
            self.items.append({
                "content_id": f"{cat}-{i:05d}",
                "title": title,
                "category": cat,
                "tags": tags,
                "author": vocab.AUTHORS[rng.integers(len(vocab.AUTHORS))],
                "published_at": iso_seconds(t_end - int(rng.integers(3600, 400 * 86400)) * 1000),
                "premium": premium,
                "price": vocab.ITEM_PRICES_USD[price] if price >= 0 else None,
                "_price_point": price,
            })
        self.price_point = np.array([it["_price_point"] for it in self.items], dtype=np.int8)
        self._fragments()

    def _fragments(self) -> None:
        cc, page_props, screen_props, page_ctx = [], [], [], []
        for it in self.items:
            path = f"/{it['category']}/{re.sub(r'[^a-z0-9]+', '-', it['title'].lower()).strip('-')}-{it['content_id'].split('-')[1]}"
            url = vocab.SITE + path
            c = f'"content_id":{_j(it["content_id"])},"category":{_j(it["category"])}'
            cc.append(c.encode())
            page_props.append(f',"properties":{{{c},"url":{_j(url)},"path":{_j(path)},"title":{_j(it["title"])}}}'.encode())
            screen_props.append(f',"properties":{{{c}}}'.encode())
            for ref in vocab.REFERRERS:
                page_ctx.append(f',"page":{{"url":{_j(url)},"path":{_j(path)},"referrer":{_j(ref)},"title":{_j(it["title"])}}}'.encode())
        self.cc = np.array(cc, dtype=object)
        self.page_props = np.array(page_props, dtype=object)
        self.screen_props = np.array(screen_props, dtype=object)
        self.page_ctx = np.array(page_ctx, dtype=object)

    def sample(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """An item per requested category; within a category the first items are the most popular."""
        r = rng.random(categories.shape[0]) ** 2.5
        return (self.cat_start[categories] + (r * self.cat_count[categories]).astype(np.int64)).astype(np.int32)

    def lines(self) -> list[bytes]:
        return [json.dumps({k: v for k, v in it.items() if not k.startswith("_")}, ensure_ascii=False).encode() for it in self.items]
