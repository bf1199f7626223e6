-- Flows at scale, part 2: templates carry versions and a task can pin one.
--
-- lakehouse.templates keeps the current version of each template (what the catalogue file
-- writes); every version ever written is kept here by a trigger, so a task pinned to version 1
-- keeps running version 1's script with version 1's parameter spec after version 2 ships.
CREATE TABLE lakehouse.template_versions (
    template_id      text NOT NULL REFERENCES lakehouse.templates (template_id) ON UPDATE CASCADE ON DELETE CASCADE,
    version          integer NOT NULL CHECK (version >= 1),
    script_location  text NOT NULL CHECK (script_location <> ''),
    description      text NOT NULL DEFAULT '',
    parameter_spec   jsonb NOT NULL CHECK (jsonb_typeof(parameter_spec) = 'array'),
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

INSERT INTO lakehouse.template_versions (template_id, version, script_location, description, parameter_spec)
SELECT template_id, version, script_location, description, parameter_spec FROM lakehouse.templates;

CREATE FUNCTION lakehouse.record_template_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lakehouse.template_versions (template_id, version, script_location, description, parameter_spec)
    VALUES (NEW.template_id, NEW.version, NEW.script_location, NEW.description, NEW.parameter_spec)
    ON CONFLICT (template_id, version) DO UPDATE SET
        script_location = EXCLUDED.script_location, description = EXCLUDED.description,
        parameter_spec = EXCLUDED.parameter_spec, recorded_at = now();
    RETURN NEW;
END $$;

CREATE TRIGGER templates_record_version AFTER INSERT OR UPDATE ON lakehouse.templates
    FOR EACH ROW EXECUTE FUNCTION lakehouse.record_template_version();

-- NULL: always the template's current version. A number: that version, which must exist.
ALTER TABLE lakehouse.flow_tasks ADD COLUMN template_version integer;
ALTER TABLE lakehouse.flow_tasks ADD CONSTRAINT flow_tasks_template_version_fkey
    FOREIGN KEY (template_id, template_version) REFERENCES lakehouse.template_versions (template_id, version)
    ON UPDATE CASCADE;
