"""Python Celery's own answers for beat's schedules, printed as one JSON table.

crates/celeriac-beat/tests/celery_table.rs runs this with the interop interpreter and checks
that celeriac computes the same thing on every row. Nothing here talks to a broker.

Which Celery call gives "the next run after an instant", and why:

* crontab: ``crontab.remaining_estimate(last_run_at)``, made with an app whose
  ``conf.timezone`` is the case's zone and a ``nowfun`` fixed at ``last_run_at``. It is
  ``remaining(*remaining_delta(last_run_at))``: ``remaining_delta`` moves ``last_run_at``
  into the app's zone and returns the ``ffwd`` to the next matching wall time, and
  ``remaining`` applies it and returns ``end - now`` in UTC. With now = last_run_at,
  ``last_run_at + remaining_estimate(last_run_at)`` is exactly the next run time, and it is
  the very call ``crontab.is_due`` (what beat asks on each tick) is built on.
  ``remaining_delta`` alone returns the pieces, not the instant, and ``is_due`` only says
  due-or-not and how many seconds to sleep, rounded through ``max(..., 0)``.
* interval: ``schedule.remaining_estimate(last_run_at)`` the same way, with
  ``last_run_at`` in the app's zone as beat keeps it (``app.now()``), because ``relative``
  rounds on that zone's wall clock.
* solar: ``solar(event, lat, lon).remaining_estimate(last_run_at)`` the same way (it
  computes with :mod:`ephem`, which must be installed), with an app in UTC and a
  ``nowfun`` fixed at ``last_run_at``: ``remaining_estimate`` returns ``next - now``, so
  ``last_run_at`` plus it is the next event, as for crontab. ``solar.is_due`` is built on
  the same call.
* fields: the sets ``crontab(**{field: spec})`` expands a spec to (``crontab_parser`` plus
  ``_expand_cronspec``'s range check), or that it raises.

Output: {"celery": version, "crontab": rows, "chains": runs, "interval": rows,
"solar": rows, "fields": rows}; instants are ISO 8601 in UTC.
"""

import json
from datetime import datetime, timedelta, timezone

import celery
from celery import Celery
from celery.schedules import crontab, schedule, solar

UTC = timezone.utc
STOCKHOLM = "Europe/Stockholm"
NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"

# (minute, hour, day_of_week, day_of_month, month_of_year), Celery's argument order, or a
# cron string for crontab.from_string.
CRONTABS = [
    ("*", "*", "*", "*", "*"),
    ("*/15", "*", "*", "*", "*"),
    ("0", "*", "*", "*", "*"),
    ("30", "2", "*", "*", "*"),  # inside both zones' spring-forward gap / fall-back overlap
    ("0", "2", "*", "*", "*"),
    ("*/20", "2", "*", "*", "*"),
    ("15,45", "1-3", "*", "*", "*"),
    ("10", "1", "*", "*", "*"),  # New York's repeated hour
    ("30", "1", "sun", "*", "*"),
    ("0", "3", "*", "*", "*"),
    ("5-55/10", "*/3", "*", "*", "*"),
    ("1,13,30-45,50-59/2", "0,8-17/2", "*", "*", "*"),
    ("0", "22-2", "*", "*", "*"),  # wrapping hour range
    ("0,30", "0-23/6", "*", "*", "*"),
    ("0", "12", "mon-fri", "*", "*"),
    ("0", "9", "sat,sun", "*", "*"),
    ("0", "0", "fri-mon", "*", "*"),  # wrapping day range
    ("0", "*/2", "*/2", "*", "*"),
    ("0", "0", "*", "1", "*"),
    ("0", "0", "*", "31", "*"),
    ("30", "23", "*", "28-31", "*"),
    ("0", "8", "mon", "1-7", "*"),  # first Monday: day_of_month AND day_of_week
    ("0", "0", "fri", "13", "*"),
    ("0", "0", "*", "1", "jan"),
    ("0", "0", "*", "1", "*/3"),
    ("59", "23", "*", "31", "dec"),
    ("0", "0", "*", "29", "2"),
    ("0", "0", "mon", "29", "feb"),  # a leap day on a Monday: decades apart
    ("0", "0", "*", "2-30/2", "2-12/2"),
    ("*/7", "*", "*", "*", "feb"),
    ("0", "12", "*", "15", "jun-aug"),
    ("45", "2", "sun", "*", "mar"),  # Stockholm's 2025 gap is on a Sunday in March
    "0 0 29 2 *",
    "*/10 1-3 * * sun",
    "0 12 1,15 * *",
]

# (last run, zone): plain days, both sides of each 2025 transition, month and year ends.
INSTANTS = [
    (datetime(2025, 1, 15, 10, 17, 23, tzinfo=UTC), "UTC"),
    (datetime(2025, 3, 29, 23, 30, tzinfo=UTC), STOCKHOLM),  # 00:30 CET, the gap's day
    (datetime(2025, 3, 30, 0, 59, 30, tzinfo=UTC), STOCKHOLM),  # 01:59:30 CET, just before
    (datetime(2025, 10, 26, 0, 15, tzinfo=UTC), STOCKHOLM),  # 02:15 CEST, first pass
    (datetime(2025, 10, 26, 1, 15, tzinfo=UTC), STOCKHOLM),  # 02:15 CET, second pass
    (datetime(2025, 3, 9, 6, 45, tzinfo=UTC), NEW_YORK),  # 01:45 EST, before the gap
    (datetime(2025, 11, 2, 5, 20, tzinfo=UTC), NEW_YORK),  # 01:20 EDT, first pass
    (datetime(2025, 11, 2, 6, 20, tzinfo=UTC), NEW_YORK),  # 01:20 EST, second pass
    (datetime(2025, 12, 31, 23, 59, 59, 500000, tzinfo=UTC), "UTC"),
    (datetime(2024, 2, 28, 22, 30, tzinfo=UTC), STOCKHOLM),  # 23:30 on a leap February 28
    (datetime(2025, 5, 1, 3, 59, tzinfo=UTC), NEW_YORK),  # 23:59 EDT on April 30
    # Lord Howe falls back half an hour, 02:00 +11 to 01:30 +10:30, at 15:00 UTC.
    (datetime(2025, 4, 5, 14, 20, tzinfo=UTC), LORD_HOWE),  # 01:20 +11
    (datetime(2025, 4, 5, 15, 5, tzinfo=UTC), LORD_HOWE),  # 01:35 +10:30, second pass
]

# Runs one after another from a start, each from the one before, as beat does.
CHAINS = [
    (("30", "2", "*", "*", "*"), STOCKHOLM, datetime(2025, 3, 29, 12, tzinfo=UTC)),
    (("30", "2", "*", "*", "*"), STOCKHOLM, datetime(2025, 10, 25, 12, tzinfo=UTC)),
    (("*/20", "2", "*", "*", "*"), STOCKHOLM, datetime(2025, 3, 29, 12, tzinfo=UTC)),
    (("*/20", "2", "*", "*", "*"), STOCKHOLM, datetime(2025, 10, 25, 12, tzinfo=UTC)),
    (("0", "*", "*", "*", "*"), STOCKHOLM, datetime(2025, 10, 25, 23, 30, tzinfo=UTC)),
    (("15,45", "1-3", "*", "*", "*"), STOCKHOLM, datetime(2025, 3, 29, 23, 30, tzinfo=UTC)),
    (("30", "2", "*", "*", "*"), NEW_YORK, datetime(2025, 3, 8, 12, tzinfo=UTC)),
    (("30", "1", "*", "*", "*"), NEW_YORK, datetime(2025, 11, 1, 12, tzinfo=UTC)),
    (("*/30", "1", "*", "*", "*"), NEW_YORK, datetime(2025, 11, 1, 12, tzinfo=UTC)),
    (("0", "*", "*", "*", "*"), NEW_YORK, datetime(2025, 11, 2, 4, 30, tzinfo=UTC)),
]
CHAIN_RUNS = 6

# (seconds, relative); each is asked from every instant in INTERVAL_INSTANTS.
INTERVALS = [
    (30, False),
    (3600, False),
    (30, True),
    (90, True),
    (300, True),
    (3600, True),
    (5400, True),
    (86400, True),
    (129600, True),
    (0.5, True),
]
INTERVAL_INSTANTS = [
    (datetime(2025, 1, 15, 10, 42, 17, 700000, tzinfo=UTC), "UTC"),
    (datetime(2025, 1, 15, 10, 42, 17, tzinfo=UTC), "Asia/Kolkata"),  # a half-hour offset
    (datetime(2025, 3, 30, 0, 40, tzinfo=UTC), STOCKHOLM),  # 01:40 CET, gap ahead
    (datetime(2025, 3, 29, 23, 10, tzinfo=UTC), STOCKHOLM),  # 00:10 CET on the gap's day
    (datetime(2025, 10, 26, 0, 40, tzinfo=UTC), STOCKHOLM),  # 02:40 CEST, overlap ahead
    (datetime(2025, 11, 2, 5, 40, tzinfo=UTC), NEW_YORK),  # 01:40 EDT
    (datetime(2025, 11, 2, 6, 0, tzinfo=UTC), NEW_YORK),  # 01:00 EST
    (datetime(2025, 3, 9, 6, 30, 0, 250000, tzinfo=UTC), NEW_YORK),  # 01:30 EST
    # A relative hour from here rounds to a boundary before the start (the half-hour
    # fall-back), which sends Celery down its neighbouring-boundaries branch.
    (datetime(2025, 4, 5, 14, 10, tzinfo=UTC), LORD_HOWE),
    (datetime(2025, 4, 5, 14, 29, 30, tzinfo=UTC), LORD_HOWE),
    (datetime(2025, 4, 5, 14, 45, tzinfo=UTC), LORD_HOWE),
]

SOLAR_EVENTS = [
    "dawn_astronomical", "dawn_nautical", "dawn_civil", "sunrise", "solar_noon", "sunset",
    "dusk_civil", "dusk_nautical", "dusk_astronomical",
]
# (lat, lon): Reykjavik has no astronomical or nautical night around midsummer, nor
# civil night near the solstice, which sends Celery's search on to later days.
SOLAR_PLACES = [
    (59.33, 18.07),  # Stockholm
    (40.71, -74.0),  # New York
    (-33.87, 151.21),  # Sydney
    (-0.18, -78.47),  # Quito
    (64.15, -21.94),  # Reykjavik
]
SOLAR_INSTANTS = [
    datetime(2025, 3, 20, 9, 1, tzinfo=UTC),  # the March equinox
    datetime(2025, 3, 30, 0, 30, tzinfo=UTC),  # Stockholm's spring-forward night
    datetime(2025, 6, 21, 2, 42, tzinfo=UTC),  # the June solstice
    datetime(2025, 9, 22, 18, 19, tzinfo=UTC),  # the September equinox
    datetime(2025, 11, 2, 6, 0, tzinfo=UTC),  # New York's fall-back hour
    datetime(2025, 12, 21, 15, 3, tzinfo=UTC),  # the December solstice
    datetime(2026, 2, 14, 11, 37, 12, 250000, tzinfo=UTC),
]

FIELD_SPECS = [
    ("minute", "*/15"),
    ("minute", "1,13,30-45,50-59/2"),
    ("minute", "*/100"),
    ("minute", " 5"),
    ("minute", "+5"),
    ("minute", "1_0"),
    ("minute", "1-5!"),
    ("minute", "1-2-3"),
    ("minute", "*/2/3"),
    ("minute", "60"),
    ("minute", "-5"),
    ("minute", " -5"),
    ("minute", "5-"),
    ("minute", "5/2"),
    ("minute", "1 - 5"),
    ("minute", "*/"),
    ("minute", "*/0"),
    ("minute", "1-5/"),
    ("minute", "1-5/2x"),
    ("minute", ""),
    ("minute", "1,,2"),
    ("minute", "jan"),
    ("hour", "22-2"),
    ("hour", "22-4/2"),
    ("hour", "0,8-17/2"),
    ("hour", "24"),
    ("hour", "mon"),
    ("day_of_week", "mon-fri"),
    ("day_of_week", "fri-mon"),
    ("day_of_week", "Sunday,SAT"),
    ("day_of_week", "Monkey"),
    ("day_of_week", "*/2"),
    ("day_of_week", "7"),
    ("day_of_week", "sun-sat"),
    ("day_of_week", "mon-fri/2"),
    ("day_of_week", "funday"),
    ("day_of_week", "dec"),
    ("day_of_week", "jan"),
    ("day_of_month", "*/3"),
    ("day_of_month", "2-30/2"),
    ("day_of_month", "0"),
    ("day_of_month", "32"),
    ("day_of_month", "25-5"),
    ("month_of_year", "2-12/2"),
    ("month_of_year", "nov-feb"),
    ("month_of_year", "January,dec"),
    ("month_of_year", "13"),
]


def iso(dt):
    return dt.astimezone(UTC).isoformat()


_apps = {}


def app_in(zone):
    """One app per zone: `app.timezone` is cached, so the zone is set before first use."""
    if zone not in _apps:
        app = Celery(f"beat-table-{zone}", set_as_current=False)
        app.conf.timezone = zone
        app.conf.enable_utc = True
        _apps[zone] = app
    return _apps[zone]


def make_crontab(entry, zone, now):
    app = app_in(zone)
    if isinstance(entry, str):
        c = crontab.from_string(entry)
        c.app, c.nowfun = app, (lambda: now)
        return c
    minute, hour, day_of_week, day_of_month, month_of_year = entry
    return crontab(minute=minute, hour=hour, day_of_week=day_of_week,
                   day_of_month=day_of_month, month_of_year=month_of_year,
                   app=app, nowfun=lambda: now)


def crontab_next(entry, zone, last_run):
    # last_run is in UTC, so adding the remaining time is elapsed-time arithmetic.
    return last_run + make_crontab(entry, zone, last_run).remaining_estimate(last_run)


def interval_next(seconds, relative, zone, last_run):
    app = app_in(zone)
    local = last_run.astimezone(app.timezone)
    s = schedule(timedelta(seconds=seconds), relative=relative, app=app,
                 nowfun=lambda: local)
    # Added to the UTC instant: aware arithmetic on a zoned datetime is wall-clock
    # arithmetic in Python, which would misplace the result across a transition.
    return last_run + s.remaining_estimate(local)


def solar_next(event, lat, lon, last_run):
    s = solar(event, lat, lon, app=app_in("UTC"), nowfun=lambda: last_run)
    return last_run + s.remaining_estimate(last_run)


def solar_rows():
    return [
        {"event": event, "lat": lat, "lon": lon, "after": iso(t),
         "next": iso(solar_next(event, lat, lon, t))}
        for event in SOLAR_EVENTS for lat, lon in SOLAR_PLACES for t in SOLAR_INSTANTS
    ]


def entry_json(entry):
    if isinstance(entry, str):
        return {"cron": entry}
    keys = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
    return dict(zip(keys, entry))


def crontab_rows():
    return [
        {"entry": entry_json(entry), "tz": zone, "after": iso(t),
         "next": iso(crontab_next(entry, zone, t))}
        for entry in CRONTABS for t, zone in INSTANTS
    ]


def chain_rows():
    rows = []
    for entry, zone, start in CHAINS:
        runs, last = [], start
        for _ in range(CHAIN_RUNS):
            nxt = crontab_next(entry, zone, last)
            runs.append(iso(nxt))
            if nxt <= last:  # Celery answered the past; following it would not advance
                break
            last = nxt
        rows.append({"entry": entry_json(entry), "tz": zone, "start": iso(start),
                     "runs": runs})
    return rows


def interval_rows():
    return [
        {"seconds": seconds, "relative": relative, "tz": zone, "last_run": iso(t),
         "next": iso(interval_next(seconds, relative, zone, t))}
        for seconds, relative in INTERVALS for t, zone in INTERVAL_INSTANTS
    ]


def field_rows():
    rows = []
    for field, spec in FIELD_SPECS:
        try:
            values = sorted(getattr(crontab(**{field: spec}), field))
            rows.append({"field": field, "spec": spec, "values": values})
        except Exception as e:  # Celery raises ParseException or ValueError
            rows.append({"field": field, "spec": spec, "error": f"{type(e).__name__}: {e}"})
    return rows


if __name__ == "__main__":
    print(json.dumps({
        "celery": celery.__version__,
        "crontab": crontab_rows(),
        "chains": chain_rows(),
        "interval": interval_rows(),
        "solar": solar_rows(),
        "fields": field_rows(),
    }, indent=1))
