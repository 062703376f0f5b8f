# JupyterHub configuration for a class running the AI microscope course (see jupyterhub.md).
# Assumes the course was set up in /srv/ai-microscope with its model cache in /srv/ai-microscope-cache.
c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

COURSE = "/srv/ai-microscope"
CACHE = "/srv/ai-microscope-cache"

# Accounts: the machine's own users (replace with your institution's authenticator).
c.JupyterHub.authenticator_class = "pam"

# One systemd unit per learner, so memory and CPU limits are enforced by the kernel (cgroups).
c.JupyterHub.spawner_class = "systemdspawner.SystemdSpawner"
c.SystemdSpawner.mem_limit = "3G"  # largest measured kernel peak (2,478 MiB) plus headroom
c.SystemdSpawner.cpu_limit = 1.0
c.Spawner.default_url = "/lab"

# shared: the course's model cache, offline mode, one thread per kernel (as the lessons were measured).
c.Spawner.environment = {
    "MICROSCOPE_CACHE": CACHE,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}

# shared: copy the lessons and exercises into the learner's home the first time they log in.
def copy_course(spawner):
    import os
    import shutil

    home = os.path.expanduser(f"~{spawner.user.name}")
    target = os.path.join(home, "ai-microscope")
    if not os.path.exists(target):
        os.makedirs(target)
        for folder in ("notebooks", "exercises"):
            shutil.copytree(os.path.join(COURSE, folder), os.path.join(target, folder))
        shutil.chown(target, spawner.user.name)
        for root, dirs, files in os.walk(target):
            for name in dirs + files:
                shutil.chown(os.path.join(root, name), spawner.user.name)


c.Spawner.pre_spawn_hook = copy_course
