/*
 * The RQ workers page: its views, and the calls behind them. Data comes from our CLI through
 * cockpit.spawn (superuser "try": the env file is 0640) and from journalctl; instances are driven
 * through systemd's D-Bus API, so polkit decides exactly as it does for systemctl. Nothing here holds a
 * secret: the page shows only what the CLI prints, and it masks the Redis URL. What the DOM holds (ids,
 * data-* attributes) is the contract the browser tests (tests/e2e) select by: see GUIDE / the README.
 */
(function () {
    "use strict";

    const D = window.RqData;
    const CLI = "rq-worker-service";
    const REFRESH_MS = 5000;
    const TABS = ["overview", "instances", "failed", "job"];
    const SPAWN = { superuser: "try", err: "message" };
    const SYSTEMD = "org.freedesktop.systemd1";
    const MANAGER_PATH = "/org/freedesktop/systemd1";
    const MANAGER = "org.freedesktop.systemd1.Manager";
    const PATTERN = "rq-worker@*.service";
    const JOB_ID_RE = /^[A-Za-z0-9_-]+(?::[A-Za-z0-9_-]+)?$/;

    const state = {
        tab: null,
        status: null,
        refreshed: 0,
        failedRows: [],
        instances: null, // this host's rq-worker@ units, once systemd listed them
        jobId: null,
        job: null,
        journal: null, // the running journalctl: { proc, follow, rest }
        busy: {},
        errors: new Map(),
    };
    let systemd = null;

    const $ = id => document.getElementById(id);

    /* ---- small DOM helpers: text only (textContent), never HTML ---- */

    function el(tag, attrs, children) {
        const node = document.createElement(tag);
        for (const [name, value] of Object.entries(attrs || {})) {
            if (value === null || value === undefined || value === false)
                continue;
            if (name === "text")
                node.textContent = String(value);
            else if (name === "className")
                node.className = value;
            else
                node.setAttribute(name, value === true ? "" : String(value));
        }
        (children || []).forEach(child => node.append(child));
        return node;
    }

    function cell(field, text, extra) {
        return el("td", Object.assign({ "data-field": field, text }, extra || {}));
    }

    function replaceRows(tbody, rows) {
        tbody.replaceChildren(...rows);
    }

    /* ---- errors and notices: one line each ---- */

    /** The error of one source (status, failed, an action …), or null when it went well again; #error
     *  shows every one still standing, a line each, newest last: a refused action stays in view while
     *  the 5 s refresh reports its own error again. */
    function setError(source, message) {
        state.errors.delete(source);
        if (message)
            state.errors.set(source, message);
        const all = Array.from(state.errors.values());
        const box = $("error");
        box.replaceChildren(...all.map(line => el("div", { text: line })));
        box.hidden = all.length === 0;
    }

    function notice(message) {
        const box = $("notice");
        box.textContent = message || "";
        box.hidden = !message;
    }

    /* ---- the calls ---- */

    /** Our CLI (or journalctl) to completion: its stdout; rejected with the one line to show. */
    function run(args) {
        return new Promise((resolve, reject) => {
            try {
                cockpit.spawn(args, SPAWN).then(out => resolve(out), ex => reject(new Error(D.errorLine(ex))));
            } catch (ex) {
                reject(new Error(D.errorLine(ex)));
            }
        });
    }

    /** A method of systemd's Manager over D-Bus, as the logged-in user (polkit decides). */
    function manager(method, args) {
        return new Promise((resolve, reject) => {
            try {
                if (!systemd) {
                    const client = cockpit.dbus(SYSTEMD, { superuser: "try" });
                    client.addEventListener("close", () => { if (systemd === client) systemd = null }); // anew next call
                    systemd = client;
                }
                systemd.call(MANAGER_PATH, MANAGER, method, args)
                        .then(reply => resolve(reply), ex => reject(new Error(D.errorLine(ex))));
            } catch (ex) {
                reject(new Error(D.errorLine(ex)));
            }
        });
    }

    /** ``task`` unless one of ``key`` is still running (a slow CLI must not pile up every 5 s). */
    function once(key, task) {
        if (state.busy[key])
            return Promise.resolve();
        state.busy[key] = true;
        return Promise.resolve().then(task).finally(() => { state.busy[key] = false });
    }

    /* ---- confirmation ---- */

    function confirmAction(message, okLabel) {
        return new Promise(resolve => {
            const dialog = $("confirm");
            const ok = $("confirm-ok");
            const cancel = $("confirm-cancel");
            dialog.querySelector(".message").textContent = message;
            ok.textContent = okLabel || "OK";
            const finish = answer => {
                ok.onclick = cancel.onclick = dialog.oncancel = null;
                if (dialog.open)
                    dialog.close();
                resolve(answer);
            };
            ok.onclick = () => finish(true);
            cancel.onclick = () => finish(false);
            dialog.oncancel = event => { event.preventDefault(); finish(false) };
            dialog.showModal();
        });
    }

    /* ---- overview ---- */

    function refreshStatus() {
        return once("status", () => run([CLI, "status", "--json"])
                .then(out => {
                    const status = D.parseStatus(out);
                    state.status = status;
                    renderOverview(status);
                    setError("status", null);
                    state.refreshed += 1;
                    document.body.dataset.refreshed = String(state.refreshed);
                    if (state.tab === "failed")
                        renderQueueChoice();
                })
                .catch(ex => {
                    setError("status", ex.message);
                    const verdict = $("verdict");
                    verdict.dataset.level = "UNKNOWN";
                    verdict.textContent = "UNKNOWN: " + ex.message;
                })
                .finally(() => { document.body.dataset.ready = "1" }));
    }

    function renderOverview(status) {
        const verdict = $("verdict");
        verdict.dataset.level = status.level;
        verdict.textContent = status.verdict + (status.suspended.length
            ? " — workers SUSPENDED (rq suspend) under key prefix " + status.suspended.join(", ")
            : "");
        const several = status.reports.length > 1;
        $("redis").textContent = status.reports.map(r => "Redis " + r.redis + ", key prefix " + r.key_prefix).join("; ");

        replaceRows($("queues").tBodies[0], status.queues.map(q => el("tr", {
            "data-queue": q.name, "data-prefix": q.key_prefix,
        }, [
            el("th", { scope: "row", text: several ? q.name + " (" + q.key_prefix + ")" : q.name }),
            cell("queued", q.queued, { className: "num" }),
            cell("oldest", D.duration(q.oldest_age), { className: "num" }),
            cell("started", q.started, { className: "num" }),
            cell("scheduled", q.scheduled, { className: "num" }),
            cell("failed", q.failed, { className: "num" }),
            cell("finished", q.finished, { className: "num" }),
        ])));

        replaceRows($("workers").tBodies[0], status.workers.map(w => {
            const jobCell = cell("job", "");
            if (w.job_id)
                jobCell.append(jobLink(w.job_id));
            return el("tr", {
                "data-worker": w.name, "data-host": w.host, "data-instance": D.instanceOf(w.unit || w.name) || "",
                "data-state": w.state, "data-stale": w.stale ? "1" : "0", "data-prefix": w.key_prefix,
            }, [
                cell("host", w.host),
                cell("instance", D.unitName(w) || w.name, { title: w.name }),
                cell("state", w.stale ? w.state + " (stale)" : w.state),
                jobCell,
                cell("func", w.job_func || ""),
                cell("running", w.job_id ? D.duration(w.job_running_for) : ""),
                cell("heartbeat", D.duration(w.heartbeat_age) + " ago"),
                cell("queues", (w.queues || []).join(", ")),
            ]);
        }));

        $("abandoned-part").hidden = status.abandoned.length === 0;
        replaceRows($("abandoned").tBodies[0], status.abandoned.map(a => el("tr", { "data-job-id": a.job_id }, [
            el("td", { "data-field": "job" }, [jobLink(a.job_id)]),
            cell("queue", a.queue), cell("func", a.func), cell("worker", a.worker),
            cell("since", D.duration(a.since) + " ago"),
        ])));

        $("autoscaler").replaceChildren(...(status.autoscalers.length ? status.autoscalers.map(autoscalerLine)
            : [el("p", { className: "muted", text: "No autoscaler reports (rq-worker-autoscale.service is not running)." })]));
        $("fencing").replaceChildren(...(status.fenced.length ? status.fenced.map(f => el("p", {
            text: f.worker + " on " + f.host + " was fenced by " + f.by + " " + D.duration(f.ago) + " ago; jobs re-queued: " +
                  (f.jobs.length ? f.jobs.join(" ") : "none"),
        })) : [el("p", { className: "muted", text: "No worker was fenced in the last 24 h." })]));
    }

    function autoscalerLine(a) {
        const alive = a.age > 60 ? "stale (last report " + D.duration(a.age) + " ago)" : "running";
        const lines = [
            "On " + a.host + ": " + alive + "; " + a.running + " instances running (" + a.busy + " busy), min " +
                a.minimum + ", max " + a.maximum + "; memory: " + a.memory,
            "Instances (* started by it): " + (a.instances.join(" ") || "-"),
        ];
        if (a.last_decision)
            lines.push("Last decision, " + D.duration(a.last_decision_age) + " ago: " + a.last_decision);
        if (a.holding)
            lines.push("Now: " + a.holding);
        return el("div", { "data-host": a.host }, lines.map(text => el("p", { text })));
    }

    function jobLink(jobId) {
        const link = el("a", { href: "#", text: jobId, "data-open-job": jobId });
        return link;
    }

    /* ---- instances ---- */

    function refreshInstances() {
        return once("instances", () => Promise.all([
            manager("ListUnitsByPatterns", [[], [PATTERN]]),
            manager("ListUnitFilesByPatterns", [[], [PATTERN]]),
        ]).then(([units, files]) => {
            const rows = D.instances(units[0], files[0], {}, (state.instances || []).map(r => r.unit));
            return Promise.all(rows.map(r => manager("GetUnitFileState", [r.unit])
                    .then(reply => reply[0], () => "unknown")))
                    .then(fileStates => {
                        rows.forEach((r, i) => { r.enabled = fileStates[i] });
                        state.instances = rows;
                        renderInstances(rows);
                        setError("instances", null);
                    });
        }).catch(ex => setError("instances", "systemd: " + ex.message)));
    }

    function renderInstances(rows) {
        $("instances-empty").hidden = rows.length > 0;
        replaceRows($("instances").tBodies[0], rows.map(r => {
            const running = r.active === "active" || r.active === "reloading" || r.active === "activating";
            const enabled = r.enabled === "enabled" || r.enabled === "enabled-runtime";
            const button = (action, label, usable) => el("button", {
                type: "button", "data-action": action, text: label, disabled: !usable,
            });
            return el("tr", { "data-unit": r.unit, "data-active": r.active, "data-enabled": r.enabled }, [
                el("th", { scope: "row", text: r.unit }),
                cell("active", r.active),
                cell("enabled", r.enabled),
                el("td", { "data-field": "actions" }, [
                    button("start", "Start", !running),
                    button("stop", "Stop", r.active !== "inactive" && r.active !== "failed"),
                    button("reload", "Reload", r.active === "active"),
                    button("restart", "Restart", true),
                    button("enable", "Enable", !enabled),
                    button("disable", "Disable", enabled),
                ]),
            ]);
        }));
    }

    function unitAction(unit, action) {
        let work;
        if (action === "start")
            work = () => manager("StartUnit", [unit, "replace"]);
        else if (action === "stop")
            work = () => confirmAction("Stop " + unit + "? Its running job finishes first (a warm stop); " +
                                       "the instance stops once that job is done.", "Stop")
                    .then(ok => ok && manager("StopUnit", [unit, "replace"]));
        else if (action === "reload")
            work = () => manager("ReloadUnit", [unit, "replace"]);
        else if (action === "restart")
            work = () => manager("RestartUnit", [unit, "replace"]);
        else if (action === "enable")
            work = () => manager("EnableUnitFiles", [[unit], false, false]).then(() => manager("Reload", []));
        else if (action === "disable")
            work = () => manager("DisableUnitFiles", [[unit], false]).then(() => manager("Reload", []));
        else
            return Promise.resolve();
        return work()
                .then(() => setError("action", null))
                .catch(ex => setError("action", action + " " + unit + ": " + ex.message))
                .finally(() => { refreshInstances(); refreshStatus() });
    }

    function addInstance() {
        if (!state.instances) {
            setError("action", "add an instance: systemd has not listed this host's instances yet; try again in a moment");
            return Promise.resolve();
        }
        const unit = "rq-worker@" + D.nextFreeInstance(state.instances.map(r => r.unit)) + ".service";
        const button = $("add-instance");
        button.disabled = true;
        return manager("EnableUnitFiles", [[unit], false, false])
                .then(() => manager("Reload", []))
                .then(() => manager("StartUnit", [unit, "replace"]))
                .then(() => { setError("action", null); notice("Added " + unit + " (enabled and started).") })
                .catch(ex => setError("action", "add " + unit + ": " + ex.message))
                .finally(() => { button.disabled = false; refreshInstances(); refreshStatus() });
    }

    /* ---- failed jobs ---- */

    function refreshFailed() {
        return once("failed", () => run([CLI, "failed", "--json"])
                .then(out => {
                    state.failedRows = D.parseFailed(out);
                    renderFailed(state.failedRows);
                    setError("failed", null);
                })
                .catch(ex => setError("failed", ex.message)));
    }

    function renderFailed(rows) {
        $("failed-empty").hidden = rows.length > 0;
        replaceRows($("failed").tBodies[0], rows.map(r => el("tr", {
            "data-job-id": r.job_id, "data-queue": r.queue,
        }, [
            cell("ended", D.timestamp(r.ended_at), { title: r.worker ? "on " + r.worker : null }),
            cell("queue", r.queue),
            cell("func", r.func),
            cell("error", r.exc_last_line || ""),
            el("td", { "data-field": "actions" }, [
                el("button", { type: "button", "data-action": "requeue", text: "Requeue" }),
                el("button", { type: "button", "data-action": "show", text: "Show" }),
            ]),
        ])));
        renderQueueChoice();
    }

    /** The queues that have failed jobs, for "requeue all of a queue"; the choice kept across refreshes. */
    function renderQueueChoice() {
        const select = $("requeue-queue-name");
        const chosen = select.value;
        const names = D.failedQueues(ownQueues(), state.failedRows);
        select.replaceChildren(...names.map(name => el("option", { value: name, text: name })));
        if (names.includes(chosen))
            select.value = chosen;
        $("requeue-queue").disabled = names.length === 0;
    }

    /** The status queues of the env file's own key prefix: the one ``failed`` and ``requeue`` work on. */
    function ownQueues() {
        if (!state.status)
            return [];
        const own = state.status.reports[0].key_prefix;
        return state.status.queues.filter(q => q.key_prefix === own);
    }

    function requeueOne(jobId, queue) {
        return confirmAction("Requeue job " + jobId + "? It goes back to queue " + queue + " and runs again.", "Requeue")
                .then(ok => ok && run([CLI, "requeue", "--json", "--", jobId]).then(out => {
                    const done = JSON.parse(out);
                    notice(done.length ? "Requeued " + jobId + " on " + queue + "." : jobId + " was no longer failed.");
                    setError("action", null);
                }))
                .catch(ex => setError("action", "requeue " + jobId + ": " + ex.message))
                .finally(() => { refreshFailed(); refreshStatus() });
    }

    function requeueQueue() {
        const queue = $("requeue-queue-name").value;
        if (!queue)
            return Promise.resolve();
        const counted = ownQueues().find(q => q.name === queue);
        const count = counted ? counted.failed : state.failedRows.filter(r => r.queue === queue).length;
        return confirmAction("Requeue all " + D.count(count, "failed job") + " of queue " + queue + "? They go back to the queue " +
                             "and run again.", "Requeue all")
                .then(ok => ok && run([CLI, "requeue", "--json", "--queue=" + queue]).then(out => {
                    const done = JSON.parse(out);
                    notice("Requeued " + D.count(done.length, "job") + " of queue " + queue + ".");
                    setError("action", null);
                }))
                .catch(ex => setError("action", "requeue --queue " + queue + ": " + ex.message))
                .finally(() => { refreshFailed(); refreshStatus() });
    }

    /* ---- one job: its detail and its journal records ---- */

    const JOB_FIELDS = [
        ["status", "Status"], ["queue", "Queue"], ["call", "Call"], ["created_at", "Created"],
        ["enqueued_at", "Enqueued"], ["started_at", "Started"], ["ended_at", "Ended"], ["retries_left", "Retries left"],
        ["timeout", "Timeout (s)"], ["worker", "Worker"], ["last_result", "Last result"], ["meta", "Meta"],
    ];

    function openJob(jobId) {
        if (!JOB_ID_RE.test(jobId)) {
            setError("job", "'" + jobId + "' is not a job id: letters, digits, _ and - (the overview and failed list show them)");
            return;
        }
        cockpit.location.go(["job", jobId]);
        route();
    }

    function loadJob(jobId) {
        stopJournal();
        state.jobId = jobId;
        state.job = null;
        $("job-id").value = jobId;
        $("job-log").replaceChildren();
        $("job-detail").hidden = true;
        return fetchJob(jobId).then(info => {
            if (info && state.jobId === jobId)
                startJournal(jobId, D.isLive(info.status));
        });
    }

    /** The job's ``job --json``; null (its error shown) when it failed or another job was opened meanwhile. */
    function fetchJob(jobId) {
        return run([CLI, "job", "--json", "--", jobId])
                .then(out => {
                    if (state.jobId !== jobId)
                        return null;
                    const info = JSON.parse(out);
                    state.job = info;
                    renderJob(info);
                    setError("job", null);
                    return info;
                })
                .catch(ex => {
                    if (state.jobId === jobId)
                        setError("job", ex.message);
                    return null;
                });
    }

    function renderJob(info) {
        const detail = $("job-detail");
        detail.querySelector("dl").replaceChildren(...[].concat(...JOB_FIELDS.map(([key, label]) => {
            let value = info[key];
            if (value === null || value === undefined || value === "")
                value = "-";
            else if (key.endsWith("_at"))
                value = D.timestamp(value);
            else if (typeof value === "object")
                value = JSON.stringify(value);
            return [el("dt", { text: label }), el("dd", { "data-field": key, text: value })];
        })));
        const traceback = detail.querySelector("pre.traceback");
        traceback.textContent = info.traceback ? info.traceback.replace(/\s+$/, "") : "";
        traceback.dataset.from = info.traceback_from || "";
        detail.hidden = false;
    }

    /** journalctl for the job's RQ_JOB_ID=: all its records, then (``follow``) the new ones as they come.
     *  A whole read (no follow) replaces the list only once journalctl has ended, so the re-read after a
     *  followed job ends does not blank the records the operator is looking at. */
    function startJournal(jobId, follow) {
        stopJournal();
        const log = $("job-log");
        if (follow)
            log.replaceChildren();
        const args = ["journalctl", "-o", "json", "--no-pager", "--quiet", "--lines=all"];
        if (follow)
            args.push("--follow");
        args.push("RQ_JOB_ID=" + jobId);
        const journal = { follow, rest: "", proc: null, closed: false, read: [] };
        state.journal = journal;
        log.dataset.following = follow ? "1" : "0";
        log.dataset.read = "0"; // "1" once journalctl has ended and every record it printed is shown
        $("job-log-state").textContent = follow ? "(following live)" : "";
        const take = line => {
            const item = recordItem(line);
            if (!item)
                return;
            if (!follow) {
                journal.read.push(item);
                return;
            }
            const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
            log.append(item);
            if (atBottom)
                log.scrollTop = log.scrollHeight;
        };
        try {
            journal.proc = cockpit.spawn(args, SPAWN);
        } catch (ex) {
            setError("journal", "journalctl: " + D.errorLine(ex));
            return;
        }
        journal.proc.stream(chunk => {
            if (journal.closed)
                return;
            const { lines, rest } = D.takeLines(journal.rest, chunk);
            journal.rest = rest;
            lines.forEach(take);
        });
        journal.proc.then(() => {
            if (journal.closed)
                return;
            D.takeLines(journal.rest, "\n").lines.forEach(take);
            if (!follow)
                log.replaceChildren(...journal.read);
            log.dataset.read = "1";
            setError("journal", null);
        }, ex => {
            if (!journal.closed)
                setError("journal", "journalctl: " + D.errorLine(ex));
        }).finally(() => {
            if (state.journal === journal) {
                log.dataset.following = "0";
                $("job-log-state").textContent = "";
            }
        });
    }

    /** One journal record as a list item; null for a line that is not one (a partial write cut by a
     *  closed follow): there is nothing to show of it. */
    function recordItem(line) {
        let record;
        try {
            record = D.journalRecord(line);
        } catch (ex) {
            return null;
        }
        return el("li", {
            className: "record" + (record.priority !== null && record.priority <= 3 ? " err" : ""),
            "data-unit": record.unit, "data-priority": record.priority,
        }, [
            el("span", { className: "time", text: D.timestamp(record.time) }), " ",
            el("span", { className: "unit", text: record.unit || "-" }), " ",
            el("span", { className: "message", text: record.message }),
        ]);
    }

    function stopJournal() {
        const journal = state.journal;
        state.journal = null;
        if (journal) {
            journal.closed = true;
            if (journal.proc)
                journal.proc.close("terminated");
        }
        $("job-log").dataset.following = "0";
        $("job-log-state").textContent = "";
    }

    /** While a followed job runs: its detail again; once it has finished or failed, the follow ends and
     *  its records are read once more, whole (the last ones may land just after its status changed). */
    function refreshJob() {
        const jobId = state.jobId;
        if (!jobId || !state.journal || !state.journal.follow)
            return Promise.resolve();
        return once("job", () => fetchJob(jobId).then(info => {
            if (info && state.jobId === jobId && !D.isLive(info.status))
                startJournal(jobId, false);
        }));
    }

    /* ---- tabs, location, refresh ---- */

    function showTab(name) {
        if (state.tab === name)
            return false;
        if (state.tab === "job")
            stopJournal();
        state.tab = name;
        document.querySelectorAll("nav button[data-tab]").forEach(button =>
            button.setAttribute("aria-selected", String(button.dataset.tab === name)));
        TABS.forEach(tab => { $("tab-" + tab).hidden = tab !== name });
        notice(null);
        if (name === "instances")
            refreshInstances();
        else if (name === "failed")
            refreshFailed();
        return true;
    }

    /** cockpit.location's path: [], [tab] or ["job", id]. */
    function route() {
        const path = cockpit.location.path;
        if (path[0] === "job" && path[1]) {
            const entered = showTab("job");
            if (entered || path[1] !== state.jobId)
                loadJob(path[1]);
        } else {
            showTab(TABS.includes(path[0]) ? path[0] : "overview");
        }
    }

    function tick() {
        if (document.visibilityState === "hidden")
            return;
        refreshStatus();
        if (state.tab === "instances")
            refreshInstances();
        else if (state.tab === "failed")
            refreshFailed();
        else if (state.tab === "job")
            refreshJob();
    }

    /** Cockpit's own light/dark choice (the shell keeps it in localStorage "shell:style"), else the system's:
     *  one class, ``theme-dark``, so that the stylesheet states the dark palette once. */
    function applyTheme() {
        let style = "auto";
        try {
            style = window.localStorage.getItem("shell:style") || "auto";
        } catch (ex) {
            // no storage (a locked-down browser): the system's preference
        }
        const system = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
        document.documentElement.classList.toggle("theme-dark", style === "dark" || (style !== "light" && system));
    }

    function wire() {
        document.querySelectorAll("nav button[data-tab]").forEach(button => button.addEventListener("click", () => {
            const tab = button.dataset.tab;
            cockpit.location.go(tab === "job" && state.jobId ? ["job", state.jobId] : [tab]);
            route();
        }));
        $("instances").addEventListener("click", event => {
            const button = event.target.closest("button[data-action]");
            if (!button || button.disabled)
                return;
            const unit = button.closest("tr").dataset.unit;
            button.disabled = true;
            unitAction(unit, button.dataset.action);
        });
        $("add-instance").addEventListener("click", () => addInstance());
        $("failed").addEventListener("click", event => {
            const button = event.target.closest("button[data-action]");
            if (!button)
                return;
            const row = button.closest("tr");
            if (button.dataset.action === "show")
                openJob(row.dataset.jobId);
            else if (button.dataset.action === "requeue")
                requeueOne(row.dataset.jobId, row.dataset.queue);
        });
        $("requeue-queue").addEventListener("click", () => requeueQueue());
        $("job-form").addEventListener("submit", event => {
            event.preventDefault();
            openJob($("job-id").value.trim());
        });
        document.addEventListener("click", event => {
            const link = event.target.closest("a[data-open-job]");
            if (link) {
                event.preventDefault();
                openJob(link.dataset.openJob);
            }
        });
        cockpit.addEventListener("locationchanged", () => route());
        window.addEventListener("storage", event => { if (event.key === "shell:style") applyTheme() });
        if (window.matchMedia)
            window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
        document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") tick() });
    }

    function start() {
        applyTheme();
        wire();
        route();
        refreshStatus();
        window.setInterval(tick, REFRESH_MS);
    }

    if (document.readyState === "loading")
        document.addEventListener("DOMContentLoaded", start);
    else
        start();
})();
