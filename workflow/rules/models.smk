# Weights every later stage starts from: built here for the synthetic world, downloaded for real ones.

if SYNTHETIC:

    rule synthetic_generator:
        output:
            generator_checkpoint(),
        params:
            resolution=config["generator"]["resolution"],
            seed=config["generator"]["seed"],
        benchmark:
            "results/benchmarks/synthetic_generator.tsv"
        log:
            "logs/synthetic_generator.log",
        script:
            "../scripts/build_synthetic_generator.py"

elif config["generator"]["kind"] == "mobilestylegan":

    # Compute nodes of a cluster often have no internet: downloads run beside the scheduler.
    localrules:
        download_generator,

    rule download_generator:
        output:
            generator_checkpoint(),
        params:
            archive=config["generator"].get("package_archive"),
            resolution=config["generator"]["resolution"],
        log:
            "logs/download_generator.log",
        script:
            "../scripts/fetch_mobilestylegan.py"

else:

    # Compute nodes of a cluster often have no internet: downloads run beside the scheduler.
    localrules:
        download_generator,

    rule download_generator:
        output:
            generator_checkpoint(),
        params:
            url=config["generator"]["url"],
            sha256=config["generator"]["sha256"],
            archive=None,
        log:
            "logs/download_generator.log",
        script:
            "../scripts/download.py"


# The evaluation's independent judges (dlib's landmarks and face descriptor): data from a package archive.
if "judges" in config:

    localrules:
        download_judges,

    rule download_judges:
        output:
            landmarks=config["judges"]["landmarks"]["path"],
            descriptor=config["judges"]["descriptor"]["path"],
        params:
            judges=config["judges"],
        log:
            "logs/download_judges.log",
        script:
            "../scripts/fetch_judges.py"
