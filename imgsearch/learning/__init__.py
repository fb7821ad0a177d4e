"""Learning from shoppers, the last stage of the data's path (search -> learn -> search):

* :mod:`~imgsearch.learning.queries`: every search recorded with its hits, under a ``query_id``;
* :mod:`~imgsearch.learning.events`: impressions, clicks, add-to-carts and purchases on those hits;
* :mod:`~imgsearch.learning.boosts`: the periodic job that turns them into position-bias
  corrected, smoothed boosts per (query, product) and per product, which searches blend into
  their ranking (:mod:`imgsearch.search.boosting`);
* :mod:`~imgsearch.learning.adapter` and :mod:`~imgsearch.learning.tuning`: a per-shop linear map
  of query vectors, trained on the shop's pairs and activated only when it beats the identity;
* :mod:`~imgsearch.learning.judgments` and :mod:`~imgsearch.learning.interleave`: ranking
  variants compared offline on judgments from events, and online by team-draft interleaving;
* :mod:`~imgsearch.learning.simulate`: synthetic shoppers for tests and benchmarks.

The tables are OpenSearch User Behavior Insights' (migration 0022) and the adapters' (0023).
"""
