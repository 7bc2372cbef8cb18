"""Templates that only name variables are rendered without Jinja2 (manifest/plain_templates.py),
and always to the very text Jinja2 renders: checked against Jinja2 itself."""
from hypothesis import given, settings, strategies as st
from jinja2 import meta

from orchestrator.manifest import plain_templates, templates

ENV = templates.make_jinja()
VARS = {"x": "web", "y": 3, "z": 1.5, "b": True, "n": "a{{b}}", "lst": [1, 2], "none": "nope"}


def jinja(text, variables=VARS):
    return templates.render_text(ENV, text, variables)


CASES = [
    "", "plain", "plain\n", "\n\n", "{{ x }}", "{{x}}", "{{  x\t}}", "a {{ x }} b {{ y }}\n",
    "{{ x }}{{ x }}", "release = {{ y }}\nratio = {{ z }}\nflag = {{ b }}\n", "{{ n }}",
    "a } b }} c", "}}{{ x }}}}", "# comment\n{{ x }}\n",
]


def test_plain_templates_render_as_jinja2_does():
    for text in CASES:
        out = plain_templates.render(text, VARS)
        assert out is not None, text
        assert out == jinja(text), text
        assert plain_templates.names(text) == meta.find_undeclared_variables(ENV.parse(text)), text


def test_anything_else_is_left_to_jinja2():
    for text in ["{{ x | upper }}", "{{ x.y }}", "{{ true }}", "{{ none }}", "{% if x %}a{% endif %}",
                 "{# c #}{{ x }}", "{{- x }}", "{{{ x }}", "a\r\n{{ x }}", "{{ lst }}", "{{ missing }}",
                 "{{ x ~ y }}", "{{ 1 }}", "{{ range }}"]:
        assert plain_templates.render(text, VARS) is None, text


FRAGMENTS = st.sampled_from(["a", " ", "\n", "{", "}", "{{ x }}", "{{y}}", "{{ z }}", "{{ true }}",
                             "{%", "%}", "{#", "#}", "}}", "{{", "=", "\r", "{{ b }}", "{{ n }}"])


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, max_size=12))
def test_whenever_the_plain_path_answers_it_is_jinja2s_answer(parts):
    text = "".join(parts)
    out = plain_templates.render(text, VARS)
    if out is not None:
        assert out == jinja(text)
        assert plain_templates.names(text) == meta.find_undeclared_variables(ENV.parse(text))


def test_the_limits_are_jinja2s():
    assert plain_templates.MAX_TEMPLATE == templates.MAX_TEMPLATE
    assert plain_templates.MAX_OUTPUT == templates.MAX_OUTPUT
    big = "{{ x }}" * (templates.MAX_OUTPUT // 3 + 1)
    assert plain_templates.render(big, VARS) is None     # Jinja2 then refuses it, in its words
