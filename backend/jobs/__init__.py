"""RQ job functions and the policy of when to run them (retraining, push-back; issue 4)."""
