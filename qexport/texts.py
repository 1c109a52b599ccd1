"""A small built-in multilingual text set: parity checks, calibration and smoke benchmarks.

Mixed lengths on purpose (a few tokens to a few hundred), several scripts, code and numbers.
"""

from __future__ import annotations

_LONG = (
    "Retrieval-augmented generation systems split documents into passages, embed every passage "
    "once, and store the vectors in an index. At query time the question is embedded with an "
    "instruction that says what kind of passage is wanted, the nearest vectors are fetched, and "
    "the passages are handed to a language model together with the question. The quality of the "
    "whole system depends on the embedding model ranking the right passage near the top, which "
    "is why teams measure retrieval metrics such as nDCG@10 and Recall@100 on their own data "
    "before they ship a new model or a new export of an old one. "
)

BUILTIN_TEXTS: list[str] = [
    "Hello world",
    "What is the capital of China?",
    "The capital of China is Beijing.",
    "Explain gravity",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical "
    "objects and is responsible for the movement of planets around the sun.",
    "x",
    "",
    "Die Hauptstadt von Deutschland ist Berlin, eine Stadt mit fast vier Millionen Einwohnern.",
    "La tour Eiffel a été construite pour l'Exposition universelle de 1889 à Paris.",
    "El aprendizaje automático permite a los ordenadores aprender a partir de datos.",
    "中国的首都是北京，它有三千多年的历史。",
    "機械学習はデータからパターンを学習する技術です。",
    "서울은 대한민국의 수도이며 가장 큰 도시이다.",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "नई दिल्ली भारत की राजधानी है।",
    "def embed(texts: list[str]) -> np.ndarray:\n    return model.encode(texts, normalize_embeddings=True)",
    "SELECT id, title FROM papers WHERE year >= 2020 ORDER BY citations DESC LIMIT 10;",
    "The patient was given 500 mg of amoxicillin three times a day for 7 days.",
    "Q3 revenue rose 12.4% year over year to $4.27 billion, beating estimates by 3 cents a share.",
    "🙂 emojis and punctuation!!! ??? ... —",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A vaccine trains the immune system to recognise a pathogen without causing the disease.",
    "The mitochondria is the powerhouse of the cell.",
    _LONG,
    _LONG * 3,
    "Instruct: this looks like a prompt but is a document\nQuery:not really",
    "short query",
    "Tokyo is the capital of Japan and one of the most populous metropolitan areas in the world.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Le chat est sur le tapis.",
    "Ein Hund bellt im Garten.",
]
