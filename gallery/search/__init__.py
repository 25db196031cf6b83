"""Text search over the catalog: the words a shopper types, matched the way shop search engines match them.

One module per job: ``words`` (folding, tokens, stems, typo budgets), ``index`` (the inverted index, its
build and its bytes), ``ranking`` (a query's plan: joins, corrections, related words; and the ranking),
``serving`` (the index each process serves, shared through Redis) and ``results`` (``catalog_search``
and the words a result shows).

From a query to a grid:

1. **Words.** The query is case- and accent-folded (``CAFÉ`` finds "Café"; ``ｂｌｕｅ`` is ``blue``) and split
   into words. ``T-shirt`` is one word, ``tshirt``; ``Levi's`` is ``levis``; stop words (``for``, ``with``,
   ``a``) are dropped; two typed words are read as one where the catalog knows them joined (``hand bag``,
   ``t shirt``).
2. **Matching.** A product holds a word when its name holds it whole (``mens`` never matches "Womens"),
   or holds its English stem (``dresses`` finds "Dress", ``mens`` finds "Men", ``sarees`` "Saree"), or when
   the word names one of its column values: gender, category, sub-category, type, colour, usage or season
   (``kurta`` names the type "Kurtas", ``navy blue`` the colour "Navy Blue", ``footwear`` the category).
   Column values come from the catalog itself, so a new type or colour is searchable the moment it exists.
3. **Corrections.** A word the catalog does not know is replaced by the nearest word it does know: edit
   distance 1 for words of 4-7 letters, 2 from 8 letters, none below (a swap of two neighbouring letters
   is one edit), or a word it begins (``sungl``). A known word that fewer than ``k`` products hold also
   brings in the words sharing its stem's beginning (``hoodie`` also finds "Hooded"), ranked after it.
4. **Ranking.** Products holding every word come first. When none, or fewer than ``k``, do, the grid
   goes on with those holding most of the words (a word naming a product type counts most), so a
   shopper never faces an empty grid while some product matches a word. Then, word by word: a whole
   word in the name, then a column value, then a stem, then a correction; then names with fewer other
   words, then shorter names, then the lower id.

The index lives in each web process's memory, built from the catalog's rows: at 44k products about
5 MB (2 MB of numpy arrays: ids, postings, column codes; the rest the vocabulary), growing by about
40 bytes a product (``bench/search_quality.py``). A process that starts loads the copy another process
shared through Redis (numpy arrays and JSON, never pickle) instead of building it. Each search asks the
database one indexed question, the catalog's version (``gallery.cards.catalog_version``, the latest
``updated_at``; from 10k products, at most once a second per process); when it moved, the index is
rebuilt: at once under 10k products, otherwise in a background thread while searches go on with the
previous index. Products deleted since a build are
dropped when fetched and bring a rebuild. Products off sale are not indexed, and one taken off sale since
the build is dropped when fetched (its card says so). Searching writes nothing to the database.
"""

from gallery.search.index import (
    INDEX_FIELDS,
    IndexDataError,
    search_index_build,
    search_index_dumps,
    search_index_loads,
)
from gallery.search.ranking import MAX_WORDS, query_plan, query_tokens, search_rank
from gallery.search.results import SearchResult, catalog_search
from gallery.search.serving import search_index, search_index_reset, search_index_warm
from gallery.search.words import text_fold, text_tokens

__all__ = [
    "INDEX_FIELDS",
    "MAX_WORDS",
    "IndexDataError",
    "SearchResult",
    "catalog_search",
    "query_plan",
    "query_tokens",
    "search_index",
    "search_index_build",
    "search_index_dumps",
    "search_index_loads",
    "search_index_reset",
    "search_index_warm",
    "search_rank",
    "text_fold",
    "text_tokens",
]
