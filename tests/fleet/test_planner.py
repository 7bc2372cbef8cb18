import pytest

from orchestrator.fleet.planner import DesiredRelease, HostFacts, PlanError, plan_fleet, plan_waves

AMD, ARM = "linux/amd64", "linux/arm64"
BLOBS = {
    "m-amd": [("m-amd", 500), ("c-amd", 100), ("base-amd", 10_000), ("app", 50)],
    "m-arm": [("m-arm", 500), ("c-arm", 100), ("base-arm", 9_000), ("app", 50)],
}


def web(release="r-new", hosts=("a1", "a2", "p1")):
    return DesiredRelease("web", release, "idx", {AMD: "m-amd", ARM: "m-arm"}, {}, tuple(hosts))


@pytest.mark.parametrize("hosts, canary, size, expected", [
    (["a", "b", "c", "d", "e"], 1, 2, [(True, ("a",)), (False, ("b", "c")), (False, ("d", "e"))]),
    (["a", "b", "c"], 0, 1, [(False, ("a",)), (False, ("b",)), (False, ("c",))]),
    (["a", "b"], 5, 1, [(True, ("a", "b"))]),
    ([], 1, 1, []),
])
def test_waves(hosts, canary, size, expected):
    assert [(w.canary, w.hosts) for w in plan_waves("web", hosts, canary, size)] == expected


def test_wave_size_must_be_positive():
    with pytest.raises(PlanError):
        plan_waves("web", ["a"], 0, 0)


def test_fresh_fleet_gets_every_blob_of_its_own_platform_only():
    facts = {n: HostFacts(n, AMD if n.startswith("a") else ARM) for n in ("a1", "a2", "p1")}
    plan = plan_fleet([web()], facts, BLOBS, {"web": (1, 1)})
    assert [d for d, _ in plan.host("p1").blobs] == ["m-arm", "c-arm", "base-arm", "app"]
    assert not any("amd" in d for d, _ in plan.host("p1").blobs)
    assert plan.host("a1").bytes_to_send == 10_650
    assert [w.hosts for w in plan.waves] == [("a1",), ("a2",), ("p1",)]
    assert plan.waves[0].canary


def test_same_release_everywhere_is_up_to_date():
    facts = {n: HostFacts(n, AMD, releases={"web": "r-new"}) for n in ("a1", "a2")}
    plan = plan_fleet([web(hosts=("a1", "a2"))], facts, BLOBS, {"web": (1, 1)})
    assert plan.up_to_date and plan.waves == ()


def test_one_changed_layer_ships_only_that_layer_and_resumes_partial():
    have = frozenset({"base-amd", "c-amd"})
    facts = {"a1": HostFacts("a1", AMD, present=have, partial={"app": 20}, releases={"web": "r-old"})}
    plan = plan_fleet([web(hosts=("a1",))], facts, BLOBS, {"web": (0, 1)})
    hp = plan.host("a1")
    assert [c.old_release for c in hp.changes] == ["r-old"]
    assert dict(hp.blobs) == {"m-amd": 500, "app": 50}
    assert hp.bytes_to_send == 500 + 30


def test_unreachable_host_is_reported_and_left_out_of_waves():
    facts = {"a1": HostFacts("a1", AMD), "a2": HostFacts("a2", error="connection refused")}
    plan = plan_fleet([web(hosts=("a1", "a2"))], facts, BLOBS, {"web": (0, 5)})
    assert plan.failed_hosts == ("a2",)
    assert [w.hosts for w in plan.waves] == [("a1",)]
    assert not plan.up_to_date


def test_platform_not_built_is_a_host_error():
    facts = {"v7": HostFacts("v7", "linux/arm/v7")}
    plan = plan_fleet([web(hosts=("v7",))], facts, BLOBS, {"web": (0, 1)})
    assert "not built for linux/arm/v7" in plan.host("v7").error


def test_rendered_plan_names_each_blob_and_its_bytes():
    from orchestrator.fleet.report import render_plan
    facts = {"a1": HostFacts("a1", AMD, present=frozenset({"base-amd"}), partial={"app": 20}, releases={"web": "r-old"})}
    text = render_plan(plan_fleet([web(hosts=("a1",))], facts, BLOBS, {"web": (0, 1)}))
    assert "a1 (linux/amd64): 3 blob(s) to ship, 630 B" in text
    assert "~ web: r-old -> r-new (replace container)" in text
    assert "app (30 B, resumes)" in text and "base-amd" not in text


def running(name, releases, projects, platform=AMD):
    return HostFacts(name, platform, releases=releases, projects=projects)


def test_a_dropped_service_of_this_project_is_removed_and_others_are_left_alone():
    facts = {
        "a1": running("a1", {"web": "r-new", "old": "r-1", "theirs": "r-9", "legacy": "r-0"},
                      {"web": "shop", "old": "shop", "theirs": "farm"}),     # legacy: no project
        "a2": running("a2", {"web": "r-new"}, {"web": "shop"}),
    }
    plan = plan_fleet([web(hosts=("a1", "a2"))], facts, BLOBS, {"web": (0, 1)}, project="shop")
    assert [r.service for r in plan.host("a1").removals] == ["old"]
    assert plan.host("a2").removals == ()
    assert not plan.up_to_date and plan.waves == ()


def test_a_host_no_service_selects_any_more_is_still_cleaned():
    facts = {"a1": running("a1", {"web": "r-new"}, {"web": "shop"}),
             "a2": running("a2", {"web": "r-old"}, {"web": "shop"}),
             "gone": HostFacts("gone", error="connection refused")}
    plan = plan_fleet([web(hosts=("a1",))], facts, BLOBS, {"web": (0, 1)}, project="shop")
    assert [h.host for h in plan.hosts] == ["a1", "a2"]      # an unreachable bystander is not a failure
    assert [(r.service, r.release) for r in plan.host("a2").removals] == [("web", "r-old")] and not plan.host("a2").changes


def test_without_a_project_nothing_is_ever_removed():
    facts = {"a1": running("a1", {"web": "r-new", "old": "r-1"}, {"web": "shop", "old": "shop"})}
    plan = plan_fleet([web(hosts=("a1",))], facts, BLOBS, {"web": (0, 1)})
    assert plan.up_to_date


def test_rendered_plan_says_what_is_removed():
    from orchestrator.fleet.report import plan_to_json, render_plan
    facts = {"a1": running("a1", {"web": "r-new", "old": "r-1"}, {"web": "shop", "old": "shop"})}
    plan = plan_fleet([web(hosts=("a1",))], facts, BLOBS, {"web": (0, 1)}, project="shop")
    assert "- old: r-1 (remove: no longer in the manifests)" in render_plan(plan)
    assert plan_to_json(plan)["hosts"][0]["removals"] == ["old"]


def test_a_first_install_reads_install():
    from orchestrator.fleet.report import render_plan
    facts = {"a1": HostFacts("a1", AMD)}
    text = render_plan(plan_fleet([web(hosts=("a1",))], facts, BLOBS, {"web": (0, 1)}))
    assert "+ web: install r-new" in text and "(none)" not in text and "replace" not in text
