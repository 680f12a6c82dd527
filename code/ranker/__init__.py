"""Ranker stage: SASRec (Kang & McAuley, 2018), the production ranker."""
