package org.alignkd.core;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

/** Writes a profile JSON as the apps would, for tests/apps to read with alignkd's own profile formatter. */
public final class ProfileSample {
    public static void main(String[] args) throws Exception {
        String json = ProfileReport.build("bundles/tiny_et", "executorch", ProfileReportTest.device(), 1, "float32",
                32, BenchmarkPrompt.DEFAULT_QUESTION, 3.25, ProfileReportTest.runs(1.0, 1.5, 2.0)).toString(1);
        Files.write(new File(args[0]).toPath(), json.getBytes(StandardCharsets.UTF_8));
    }
}
