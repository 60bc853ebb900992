"""`noisy-web`: clean documents mixed with labelled noise of the kinds real web crawls hold.

No crawl can be downloaded here, so this generator builds one: clean passages (from any data
source, `shakespeare` by default, or your own files through the `text` source) plus noise

  boilerplate       a clean passage wrapped in navigation / cookie / footer lines shared by many pages
  nav_page          a page that is nothing but navigation, cookie banner and footer
  spam_links        bullet lists of spam links and calls to action
  keyword_stuffing  a few keywords repeated to game search engines
  gibberish         random letter strings
  exact_dup         a verbatim copy of an earlier clean passage
  near_dup          a copy with case, punctuation, whitespace and ~1% word edits
  pii               a clean passage with contact lines (emails, US phone numbers, IPv4 addresses)
  toxic             a clean passage with insulting / profane lines
  non_english       German, French or Spanish text

Every training document carries a label (`documents_with_labels("train")`), so each filter's
precision and recall can be measured. The validation split is clean held-out text only (the
clean source's own validation split), so perplexity measures what the model learned of clean
text. Everything is deterministic from `seed`.
"""
from __future__ import annotations

import hashlib
import json
import random
import string
from typing import Iterator

GENERATOR_VERSION = 2  # bump whenever the generated corpus changes: it keys the token cache
NOISE_KINDS = ("boilerplate", "nav_page", "spam_links", "keyword_stuffing", "gibberish", "exact_dup", "near_dup",
               "pii", "toxic", "non_english")
DEFAULT_WEIGHTS = {k: 1.0 for k in NOISE_KINDS}

# ---------------------------------------------------------------------------- noise material

NAV_LINES = [
    "Home | About Us | Products | Services | Blog | Contact",
    "Skip to main content",
    "Menu  Search  Log in  Sign up  Cart (0)",
    "We use cookies to improve your experience. By continuing to browse the site you agree to our use of cookies.",
    "Accept all cookies | Reject non-essential cookies | Cookie settings",
    "Copyright © 2024 Example Media Group. All rights reserved.",
    "Privacy Policy | Terms of Use | Accessibility | Sitemap",
    "Subscribe to our newsletter and get 10% off your first order!",
    "Follow us on Facebook, Twitter and Instagram",
    "Share this article: Email | Print | Facebook | Twitter",
    "You are here: Home > Library > Classics > Drama",
    "Advertisement - scroll to continue reading",
    "Related posts: Top 10 plays you must read | Best quotes of all time",
    "This website uses cookies to ensure you get the best experience on our website. Learn more",
]
SPAM_DOMAINS = ["cheap-pills-4u", "best-casino-bonus", "free-iphone-winner", "replica-watches-sale", "crypto-profit-now",
                "hot-singles-near-you", "weight-loss-miracle", "payday-loans-fast", "seo-backlinks-cheap", "work-from-home-cash"]
SPAM_TLDS = ["com", "net", "biz", "info", "xyz", "ru", "top"]
SPAM_CALLS = ["CLICK HERE NOW!!!", "Limited offer - act now!", "You have WON a FREE prize!!!", "Buy now, pay later",
              "100% guaranteed results", "Earn $5000 per week from home", "Best prices online", "Order today!!!"]
KEYWORDS = [["cheap", "shoes", "online", "discount", "sale", "best", "buy", "nike", "running"],
            ["casino", "bonus", "free", "spins", "poker", "slots", "jackpot", "win", "online"],
            ["loans", "fast", "payday", "cash", "credit", "instant", "approval", "bad", "money"],
            ["weight", "loss", "diet", "pills", "fast", "burn", "fat", "keto", "slim"]]
TOXIC_LINES = [
    "You are a worthless idiot and everybody hates you.",
    "Shut the fuck up, you stupid moron.",
    "What a load of shit, go to hell you loser.",
    "Only a complete dumbass would believe this crap.",
    "I hope you choke, you pathetic piece of garbage.",
    "Fuck off and die, nobody wants you here.",
    "You ugly bitch, get lost.",
    "This is the dumbest fucking thing I have ever read.",
    "Screw you and your idiotic opinions, asshole.",
    "Go kill yourself, you useless waste of space.",
    "What a bunch of retarded morons.",
    "Kiss my ass, you ignorant prick.",
]
FIRST_NAMES = ["john", "mary", "alex", "sam", "lucy", "omar", "chen", "priya", "ivan", "sofia", "david", "emma"]
LAST_NAMES = ["smith", "jones", "garcia", "miller", "brown", "wilson", "taylor", "lee", "martin", "clark"]
MAIL_DOMAINS = ["example.com", "mail.example.org", "gmail.com", "yahoo.com", "company.net", "uni.edu"]
PII_TEMPLATES = [
    "For questions contact {email} or call {phone}.",
    "Contact: {email}",
    "Call us today at {phone}!",
    "Phone: {phone}  Email: {email}",
    "Admin login from {ip} was recorded.",
    "Our server is reachable at {ip}.",
    "Send your CV to {email}, or phone {phone} during office hours.",
]

# Small grammars for non-English text (written for this generator; no downloads).
FOREIGN = {
    "de": {
        "subj": ["Der alte Mann", "Die junge Frau", "Das kleine Kind", "Mein Bruder", "Unsere Lehrerin",
                 "Der König", "Die Katze", "Ein Fischer", "Die Familie", "Der Bürgermeister"],
        "verb": ["liest", "kauft", "sieht", "findet", "baut", "verkauft", "sucht", "malt", "liebt", "vergisst"],
        "obj": ["ein neues Buch", "den roten Apfel", "das schöne Haus", "einen langen Brief", "die alte Brücke",
                "den kleinen Garten", "eine warme Suppe", "das große Schiff", "die Zeitung", "den Schlüssel"],
        "tail": ["am Morgen", "in der Stadt", "jeden Sonntag", "mit großer Freude", "nach der Arbeit",
                 "im Sommer", "ohne Pause", "vor dem Fenster", "bei schlechtem Wetter", "trotz des Regens"],
        "join": ["und", "aber", "denn", "weil wir glauben, dass", "obwohl"],
    },
    "fr": {
        "subj": ["Le vieil homme", "La jeune femme", "Le petit enfant", "Mon frère", "Notre professeur",
                 "Le roi", "Le chat", "Un pêcheur", "La famille", "Le maire du village"],
        "verb": ["lit", "achète", "regarde", "trouve", "construit", "vend", "cherche", "peint", "aime", "oublie"],
        "obj": ["un nouveau livre", "la pomme rouge", "la belle maison", "une longue lettre", "le vieux pont",
                "le petit jardin", "une soupe chaude", "le grand bateau", "le journal", "la clé"],
        "tail": ["le matin", "dans la ville", "chaque dimanche", "avec une grande joie", "après le travail",
                 "en été", "sans pause", "devant la fenêtre", "par mauvais temps", "malgré la pluie"],
        "join": ["et", "mais", "car", "parce que nous pensons que", "bien que"],
    },
    "es": {
        "subj": ["El viejo", "La joven mujer", "El niño pequeño", "Mi hermano", "Nuestra profesora",
                 "El rey", "El gato", "Un pescador", "La familia", "El alcalde del pueblo"],
        "verb": ["lee", "compra", "mira", "encuentra", "construye", "vende", "busca", "pinta", "ama", "olvida"],
        "obj": ["un libro nuevo", "la manzana roja", "la casa bonita", "una carta larga", "el puente viejo",
                "el jardín pequeño", "una sopa caliente", "el barco grande", "el periódico", "la llave"],
        "tail": ["por la mañana", "en la ciudad", "cada domingo", "con mucha alegría", "después del trabajo",
                 "en verano", "sin descanso", "delante de la ventana", "con mal tiempo", "a pesar de la lluvia"],
        "join": ["y", "pero", "porque", "ya que creemos que", "aunque"],
    },
}


# ---------------------------------------------------------------------------- helpers

def passages(text: str, words: int) -> list[str]:
    """Cut a document at line ends into passages of about `words` words (0: the whole text)."""
    if words <= 0:
        return [text] if text.strip() else []
    out, cur, n = [], [], 0
    for line in text.splitlines():
        cur.append(line)
        n += len(line.split())
        if n >= words and (not line.strip() or n >= words * 1.5 or line.rstrip().endswith((".", "!", "?"))):
            chunk = "\n".join(cur).strip("\n")
            if chunk.strip():
                out.append(chunk)
            cur, n = [], 0
    chunk = "\n".join(cur).strip("\n")
    if chunk.strip():
        if out and n < words // 3:  # a short tail joins the previous passage
            out[-1] = out[-1] + "\n" + chunk
        else:
            out.append(chunk)
    return out


def _email(rng: random.Random) -> str:
    sep = rng.choice([".", "_", ""])
    return f"{rng.choice(FIRST_NAMES)}{sep}{rng.choice(LAST_NAMES)}{rng.randint(1, 99) if rng.random() < .4 else ''}" \
           f"@{rng.choice(MAIL_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    fmt = rng.choice(["{a}{b}{c:04d}", "({a})-{b}-{c:04d}", "({a}) {b} {c:04d}", "{a}-{b}-{c:04d}", "{a}.{b}.{c:04d}",
                      "({a}) {b}-{c:04d}", "+1 {a} {b} {c:04d}"])
    return fmt.format(a=a, b=b, c=c)


def _ip(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1 if i == 0 else 0, 255)) for i in range(4))


def _foreign_doc(rng: random.Random, lang: str, sentences: int) -> str:
    g = FOREIGN[lang]
    out = []
    for _ in range(sentences):
        s = f"{rng.choice(g['subj'])} {rng.choice(g['verb'])} {rng.choice(g['obj'])} {rng.choice(g['tail'])}"
        if rng.random() < 0.4:
            s += f", {rng.choice(g['join'])} {rng.choice(g['subj']).lower()} {rng.choice(g['verb'])} {rng.choice(g['obj'])}"
        out.append(s + ".")
    lines, i = [], 0
    while i < len(out):  # a few sentences per line, like paragraphs of a page
        k = rng.randint(1, 3)
        lines.append(" ".join(out[i:i + k]))
        i += k
    return "\n".join(lines)


def _near_dup(rng: random.Random, text: str) -> str:
    """Case, punctuation and whitespace changes (invisible after normalisation) plus ~1% word edits."""
    lines = []
    for line in text.splitlines():
        words = line.split(" ")
        for i, w in enumerate(words):
            r = rng.random()
            if r < 0.01:
                words[i] = rng.choice(["indeed", "truly", "well", "now", "sir"])
            elif r < 0.05:
                words[i] = w.upper() if rng.random() < .5 else w.lower()
            elif r < 0.08:
                words[i] = w.strip(",.;:!?") + rng.choice(["", ",", ";"])
        line = " ".join(words)
        if rng.random() < 0.1:
            line = line + " "
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the source

class NoisyWeb:
    """Clean passages mixed with labelled web noise (boilerplate, spam links, keyword stuffing,
    gibberish, exact/near duplicates, PII, toxic lines, non-English text). The val split is the
    clean source's val split, untouched. `documents_with_labels("train")` yields (text, label)."""

    name = "noisy-web"

    def __init__(self, clean=None, passage_words=300, noise_fraction=0.5, weights=None, max_clean_docs=None, seed=0):
        import lmzoo

        clean = dict(clean or {"name": "shakespeare"})
        if "name" not in clean:
            raise ValueError("noisy-web.clean needs a 'name' (a data source such as shakespeare or text)")
        spec = dict(clean)
        self.clean_spec = dict(clean)
        self.clean = lmzoo.create("data_source", spec.pop("name"), **spec)
        self.passage_words = passage_words
        self.noise_fraction = noise_fraction
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.max_clean_docs = max_clean_docs
        self.seed = seed
        self._train: list[tuple[str, dict]] | None = None

    # -- the contract
    def documents(self, split: str) -> Iterator[str]:
        if split == "val":
            for doc in self.clean.documents("val"):
                yield from passages(doc, self.passage_words)
            return
        for text, _ in self.documents_with_labels(split):
            yield text

    def documents_with_labels(self, split: str) -> Iterator[tuple[str, dict]]:
        """(text, label) pairs; a label is {"index", "kind", ...details} with kind "clean" or a noise kind."""
        if split == "val":
            for i, text in enumerate(self.documents("val")):
                yield text, {"index": i, "kind": "clean"}
            return
        if split != "train":
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self._train is None:
            self._train = self._generate()
        yield from self._train

    def fingerprint(self) -> str:
        fp = getattr(self.clean, "fingerprint", lambda: "")()
        blob = json.dumps([GENERATOR_VERSION, self.clean_spec, fp, self.passage_words, self.noise_fraction,
                           sorted(self.weights.items()), self.max_clean_docs, self.seed], default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for _, lab in self.documents_with_labels("train"):
            counts[lab["kind"]] = counts.get(lab["kind"], 0) + 1
        return "noisy-web: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))

    # -- generation
    def _generate(self) -> list[tuple[str, dict]]:
        rng = random.Random(self.seed)
        pool = [p for doc in self.clean.documents("train") for p in passages(doc, self.passage_words)]
        rng.shuffle(pool)
        if self.max_clean_docs is not None:
            pool = pool[: self.max_clean_docs]
        if not pool:
            raise ValueError("noisy-web: the clean source has no training text")
        kinds = [k for k in NOISE_KINDS if self.weights.get(k, 0) > 0]
        w = [self.weights[k] for k in kinds]
        # draw noise kinds until noise is `noise_fraction` of all documents; noise that wraps a
        # clean passage (boilerplate, pii, toxic) takes that passage out of the clean pool
        plan: list[str] = []
        clean_left = len(pool)
        while kinds and len(plan) < self.noise_fraction * (clean_left + len(plan)):
            kind = rng.choices(kinds, weights=w)[0]
            if kind in ("boilerplate", "pii", "toxic"):
                if clean_left <= 1:
                    kind = "nav_page"
                else:
                    clean_left -= 1
            plan.append(kind)
        carriers = len(pool) - clean_left
        carrier_pool, clean = pool[:carriers], pool[carriers:]
        docs: list[tuple[str, dict]] = [(t, {"kind": "clean"}) for t in clean]
        dups: list[tuple[str, str]] = []
        for kind in plan:
            if kind in ("exact_dup", "near_dup"):
                dups.append((kind, ""))
                continue
            if kind in ("boilerplate", "pii", "toxic") and not carrier_pool:
                kind = "nav_page"
            docs.append(make_noise(rng, kind, carrier_pool))
        rng.shuffle(docs)
        # duplicates go after their (clean) original, so "keep the first" keeps the original
        clean_pos = [i for i, (_, lab) in enumerate(docs) if lab["kind"] == "clean"]
        inserts = []
        for kind, _ in dups:
            src = rng.choice(clean_pos)
            text = docs[src][0]
            if kind == "near_dup":
                text = _near_dup(rng, text)
            at = rng.randint(src + 1, len(docs))
            inserts.append((at, rng.random(), text, {"kind": kind, "dup_of_position": src}))
        # insert from the back so earlier positions stay valid; record originals by identity
        order = list(range(len(docs)))
        ids = {i: i for i in range(len(docs))}
        out: list[tuple[str, dict]] = []
        by_at: dict[int, list] = {}
        for at, r, text, lab in inserts:
            by_at.setdefault(at, []).append((r, text, lab))
        for pos in order + [len(docs)]:
            for _, text, lab in sorted(by_at.get(pos, []), key=lambda x: x[0]):
                out.append((text, lab))
            if pos < len(docs):
                ids[pos] = len(out)
                out.append(docs[pos])
        result = []
        for i, (text, lab) in enumerate(out):
            lab = dict(lab, index=i)
            if "dup_of_position" in lab:
                lab["dup_of"] = ids[lab.pop("dup_of_position")]
            result.append((text, lab))
        return result



def make_noise(rng: random.Random, kind: str, carriers: list[str]) -> tuple[str, dict]:
    """One noise document of `kind` and its label; boilerplate, pii and toxic pop a clean carrier
    passage from `carriers` and inject noise lines into it."""
    if kind == "boilerplate":
        body = carriers.pop()
        head = rng.sample(NAV_LINES, rng.randint(1, 3))
        tail = rng.sample(NAV_LINES, rng.randint(1, 3))
        return "\n".join(head + [body] + tail), {"kind": kind, "injected_lines": head + tail}
    if kind == "pii":
        lines = carriers.pop().splitlines()
        counts = {"EMAIL_ADDRESS": 0, "PHONE_NUMBER": 0, "IP_ADDRESS": 0}
        injected = []
        for _ in range(rng.randint(1, 3)):
            t = rng.choice(PII_TEMPLATES)
            counts["EMAIL_ADDRESS"] += t.count("{email}")
            counts["PHONE_NUMBER"] += t.count("{phone}")
            counts["IP_ADDRESS"] += t.count("{ip}")
            line = t.format(email=_email(rng), phone=_phone(rng), ip=_ip(rng))
            lines.insert(rng.randint(0, len(lines)), line)
            injected.append(line)
        return "\n".join(lines), {"kind": kind, "pii": counts, "injected_lines": injected}
    if kind == "toxic":
        lines = carriers.pop().splitlines()
        injected = rng.sample(TOXIC_LINES, rng.randint(1, 3))
        for line in injected:
            lines.insert(rng.randint(0, len(lines)), line)
        return "\n".join(lines), {"kind": kind, "injected_lines": injected}
    if kind == "nav_page":
        lines = rng.sample(NAV_LINES, rng.randint(3, 7))
        return "\n".join(lines), {"kind": kind}
    if kind == "spam_links":
        lines = []
        for _ in range(rng.randint(5, 25)):
            url = (f"http://www.{rng.choice(SPAM_DOMAINS)}.{rng.choice(SPAM_TLDS)}/"
                   f"{rng.choice(['buy', 'offer', 'win', 'promo', 'go'])}?id={rng.randint(1000, 99999)}")
            lines.append(rng.choice(["- ", "* ", "• ", ""]) + (url if rng.random() < .7 else
                                                                 f"{rng.choice(SPAM_CALLS)} {url}"))
        return "\n".join(lines), {"kind": kind}
    if kind == "keyword_stuffing":
        kw = rng.choice(KEYWORDS)
        phrases = [" ".join(rng.sample(kw, rng.randint(2, 4))) for _ in range(rng.randint(3, 6))]
        words = []
        for _ in range(rng.randint(20, 80)):
            words.extend(rng.choice(phrases).split())
        lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
        return "\n".join(lines), {"kind": kind}
    if kind == "gibberish":
        letters = string.ascii_lowercase + "0123456789#@%&"
        n = rng.randint(50, 400)
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 12))) for _ in range(n)]
        lines, i = [], 0
        while i < n:
            k = rng.randint(6, 15)
            lines.append(" ".join(words[i:i + k]))
            i += k
        return "\n".join(lines), {"kind": kind}
    if kind == "non_english":
        lang = rng.choice(sorted(FOREIGN))
        return _foreign_doc(rng, lang, rng.randint(8, 30)), {"kind": kind, "lang": lang}
    raise ValueError(f"unknown noise kind {kind!r}")  # pragma: no cover
