"""Linear text classifiers on bag-of-n-grams features, run as the task `linear`.

`models`: the features (TF-IDF, binarized or counted n-grams) and the classifiers
(logistic regression, multinomial naive Bayes, Wang & Manning's NBSVM), with their
equations. `task`: the run, `train_and_evaluate(config, workdir)`, which `sft-jax train`
calls for `task=linear` instead of the train loop; its run directory reads like a trained
one (`sft_jax.runs`), so sweeps and reports put these baselines beside fine-tuned models.
The config is `configs/linear.py`.
"""
