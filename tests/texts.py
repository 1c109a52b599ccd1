"""Test texts: from one token to several hundred, several scripts."""

MIXED = [
    "x",
    "Hello world",
    "What is the capital of China?",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical "
    "objects and is responsible for the movement of planets around the sun.",
    "中国的首都是北京。",
    "Die Hauptstadt von Deutschland ist Berlin.",
    " ".join(f"token{i}" for i in range(120)),  # several hundred byte-level tokens
    "The quick brown fox jumps over the lazy dog. " * 12,
]
