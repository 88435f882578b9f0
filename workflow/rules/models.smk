# Weights every later stage starts from: built here for the synthetic world, downloaded for real ones.

if SYNTHETIC:

    rule synthetic_generator:
        output:
            generator_checkpoint(),
        params:
            resolution=config["generator"]["resolution"],
            seed=config["generator"]["seed"],
        log:
            "logs/synthetic_generator.log",
        script:
            "../scripts/build_synthetic_generator.py"

else:

    rule download_generator:
        output:
            generator_checkpoint(),
        params:
            url=config["generator"]["url"],
            sha256=config["generator"]["sha256"],
        log:
            "logs/download_generator.log",
        script:
            "../scripts/download.py"
